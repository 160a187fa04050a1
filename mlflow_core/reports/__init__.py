"""Markdown reports for review: jinja2 templates from templates/reports, plots with matplotlib.
Never imports torch, so `wf report` renders from recorded files alone."""
