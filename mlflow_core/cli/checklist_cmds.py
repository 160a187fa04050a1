"""`wf checklist show|tick|untick|list`."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console, print_gate, print_json

app = typer.Typer(help="Show checklists and tick their manual items.", no_args_is_help=True)


def _phase_of(project, checklist: str) -> str | None:
    from mlflow_core.workflow.phases import phase_gated_by
    return phase_gated_by(checklist, project.root)


@app.command("list")
def list_() -> None:
    """List the project's checklists and the phase each one gates."""
    from mlflow_core.workflow.phases import PHASE_ORDER, load_phase
    from mlflow_core.workflow.project import Project

    project = Project.find()
    for phase in PHASE_ORDER:
        name = load_phase(phase, project.root).exit_checklist
        console.print(f"{name:<20} gates leaving {phase}  ({project.relative(project.checklist_path(name))})")


@app.command()
def show(name: str = typer.Argument(..., help="Checklist name, e.g. reproducibility or post_baseline."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a checklist: each item, whether it is ticked, and the evidence behind it."""
    from mlflow_core.workflow.gates import evaluate_gate, load_checklist
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import load_state

    project = Project.find()
    phase = _phase_of(project, name)
    if phase is None:  # a checklist that gates no phase: show the file's marks
        checklist = load_checklist(project, name)
        rows = [{"id": i.id, "text": i.text, "kind": i.kind, "checked": i.checked} for i in checklist.items]
        if as_json:
            print_json({"checklist": name, "items": rows})
        else:
            for r in rows:
                console.print(f"[{'x' if r['checked'] else ' '}] {r['id']}: {r['text']}", markup=False)
        return
    state = load_state(project)
    verdict = evaluate_gate(project, state, phase)
    if as_json:
        print_json(verdict.to_json())
    else:
        from mlflow_core.workflow.provenance import on_record

        print_gate(verdict, [r for r in on_record(project, state) if r.kind == "waiver"
                             and r.where.startswith(f"{name} · ")])


@app.command()
def tick(name: str = typer.Argument(..., help="Checklist name."),
         ids: list[str] = typer.Argument(None, help="Item id(s) to tick."),
         note: str = typer.Option(None, "--note", help="Recorded in the history with the tick.")) -> None:
    """Tick manual items (auto items are verified by wf from evidence)."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.orchestration.checklists import tick as tick_item
    from mlflow_core.workflow.gates import load_checklist
    from mlflow_core.workflow.project import Project

    project = Project.find()
    if not ids:  # `wf checklist tick ITEM`: an unknown checklist name says which checklist holds ITEM
        manual = [i.id for i in load_checklist(project, name).items if not i.auto]
        raise UserInputError(f"name the items of {name} to tick; its manual items: {', '.join(manual) or 'none'}.",
                             hint=f"`wf checklist tick {name} ID [ID ...]`")
    for item_id in ids:
        tick_item(project, name, item_id, True, note)
        console.print(f"[green]✔[/] {name}: {item_id}")


@app.command()
def waive(name: str = typer.Argument(..., help="Checklist name, e.g. post_baseline."),
          item_id: str = typer.Argument(..., metavar="ID", help="The item to drop from the gate."),
          reason: str = typer.Option(..., "--reason", help="Why it does not apply; recorded with your name.")) -> None:
    """Drop an item of a gate on purpose, on the record: who, when and why are kept in the history and
    shown by `wf gate check`, `wf status` and every later report. `wf checklist unwaive` takes it back."""
    from mlflow_core.orchestration.checklists import waive as waive_item
    from mlflow_core.workflow.project import Project

    phase = waive_item(Project.find(), name, item_id, reason)
    console.print(f"[yellow]~[/] {name}: {item_id} waived (shown in `wf gate check {phase}`)")


@app.command()
def unwaive(name: str = typer.Argument(..., help="Checklist name."),
            item_id: str = typer.Argument(..., metavar="ID", help="The waived item.")) -> None:
    """Take a waiver back: the item counts in its gate again (the waiver stays in the history)."""
    from mlflow_core.orchestration.checklists import waive as waive_item
    from mlflow_core.workflow.project import Project

    waive_item(Project.find(), name, item_id, "", waived=False)
    console.print(f"{name}: {item_id} counts again", markup=False)


@app.command()
def untick(name: str = typer.Argument(...), ids: list[str] = typer.Argument(...)) -> None:
    """Untick manual items."""
    from mlflow_core.orchestration.checklists import tick as tick_item
    from mlflow_core.workflow.project import Project

    project = Project.find()
    for item_id in ids:
        tick_item(project, name, item_id, False)
        console.print(f"[ ] {name}: {item_id}", markup=False)
