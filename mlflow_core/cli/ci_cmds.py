"""`wf ci init github|gitlab`: a CI job that checks the gates (workflow/ci.py)."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console

app = typer.Typer(help="Continuous integration: check the gates on every push and pull request.",
                  no_args_is_help=True)


@app.command()
def init(kind: str = typer.Argument(..., help="github (a GitHub Actions workflow) or gitlab (a GitLab CI job)."),
         install: str = typer.Option(None, "--install", help="The pip requirement that installs wf in the job "
                                     "(default: wf==this version; e.g. a git URL or your index's name)."),
         force: bool = typer.Option(False, "--force", help="Write the file again over your edits."),
         verify: bool = typer.Option(False, "--verify", help="Add a job that runs `wf verify --all` on a runner of "
                                     "your own that has the data and the runs (WF_ARTIFACTS in its environment names "
                                     "their folder there); on GitHub, for the repository's own branches only."),
         runner_label: str = typer.Option("wf-verify", "--runner-label", help="With --verify: the label of that "
                                          "runner (GitHub: self-hosted + this label; GitLab: its tag).")) -> None:
    """Write a CI job that installs the bare package (no torch), runs `wf gate check --all --junit
    gates.xml` and shows the verdict: GitHub, in the job summary (safe for pull requests from forks:
    read-only token, no secrets); GitLab, as the merge request's test report."""
    from mlflow_core.workflow.ci import write_ci
    from mlflow_core.workflow.project import Project

    ci = write_ci(Project.find().root, kind, install, force, runner_label if verify else None)
    console.print(f"[green]✔[/] wrote {ci.path}: {ci.note}.")
