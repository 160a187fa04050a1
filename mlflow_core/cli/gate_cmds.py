"""`wf gate check`: exit 0 when the gate passes, 1 when it does not. No torch, no GPU, no checkpoints:
it reads committed files only, so CI can run it on a bare install."""

from __future__ import annotations

from pathlib import Path

import typer

from mlflow_core.atomic import atomic_write_text
from mlflow_core.cli.output import console, gate_table, print_json

app = typer.Typer(help="Check a phase's gate (its exit checklist) against recorded evidence.", no_args_is_help=True)


@app.command()
def check(phase: str = typer.Argument(None, help="Phase whose gate to check (default: the current phase)."),
          as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
          junit: Path = typer.Option(None, "--junit", help="Also write a JUnit XML report here (for CI)."),
          ) -> None:
    """Exit 0 when the gate passes and 1 when it does not."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.workflow.gates import evaluate_gate
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import load_state

    project = Project.find()
    state = load_state(project)
    phase = phase or state.current_phase or "setup"
    verdict = evaluate_gate(project, state, phase)
    if junit is not None:
        if junit.is_dir():
            raise UserInputError(f"--junit {junit}: is a directory; give a file name")
        atomic_write_text(junit, junit_xml(verdict))
    if as_json:
        print_json(verdict.to_json())
    else:
        console.print(gate_table(verdict))
        for o in verdict.overrides:
            console.print(f"[yellow]override on record[/]: {o['time']} {o['phase']} entered with the "
                          f"{o['gate']} gate closed — {o['reason']}")
        status = "[green]passes[/]" if verdict.passed else f"[red]is closed[/] ({len(verdict.open_items)} items left)"
        console.print(f"The {phase} gate {status}.")
    raise typer.Exit(0 if verdict.passed else 1)


def junit_xml(verdict) -> str:
    from xml.sax.saxutils import escape, quoteattr  # only for --junit: keeps `gate check` fast

    cases = []
    for item in verdict.items:
        name = quoteattr(f"{item.id}: {item.text}")
        body = "" if item.checked else f'<failure message={quoteattr(item.evidence)}>{escape(item.evidence)}</failure>'
        cases.append(f'    <testcase classname="wf.gate.{verdict.phase}" name={name}>{body}</testcase>')
    failures = sum(not i.checked for i in verdict.items)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<testsuite name="wf gate {verdict.phase}" tests="{len(verdict.items)}" failures="{failures}">\n'
            + "\n".join(cases) + "\n</testsuite>\n")
