"""Orchestration: running a phase end to end (the engine: lock, gate, run record, runner, evidence,
report), its smoke test, and multi-process launching. Above the diagnostics, reports, training and
workflow layers; below the CLI."""
