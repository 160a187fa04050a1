"""`wf diagnose NAME`."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console, print_json
from mlflow_core.diagnostics.catalog import SUMMARIES  # names and summaries for --help; imports nothing


def register(app: typer.Typer) -> None:
    app.command()(diagnose)


def diagnose(name: str = typer.Argument(..., help="auto (all of them), " + ", ".join(
                 f"{name} ({summary})" for name, summary in SUMMARIES.items()) + "."),
             run: str = typer.Option(None, "--run", help="Run id (default: the latest run with metrics)."),
             as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
             fix: bool = typer.Option(False, "--fix", help="Try the playbook's fixes as short trial runs and write "
                                      "the winning change to configs/suggested_NAME.yaml.")) -> None:
    """Find why a run failed, prove it with probes and, with --fix, verify a fix by trial runs."""
    from mlflow_core.diagnostics.engine import diagnose as run_diagnosis
    from mlflow_core.workflow.project import Project

    say = (lambda _m: None) if as_json else (lambda m: console.print(f"· {m}"))
    d = run_diagnosis(Project.find(), name, run, fix, say)
    if as_json:
        print_json(d.to_json())
        return
    if not d.findings:
        console.print(f"No finding for {name} in run {d.run_id}. {d.probes.get('note', '')}".rstrip())
        console.print("The report lists what was measured and the smallest effect each diagnostic could see.")
    for f in d.findings:
        console.print(f"[bold]{f.cause}[/] ({f.confidence:.2f}): {f.explanation}")
    for t in d.trials:
        verdict = ("reference" if t["symptom_gone"] is None
                   else "[green]symptom gone[/]" if t["symptom_gone"] else "[red]still failing[/]")
        console.print(f"  trial {t['label']}: {verdict}")
    if d.suggested_config:
        console.print(f"Suggested config: {d.suggested_config} (training_config.yaml is unchanged)")
    console.print(f"Report: {d.report}")
