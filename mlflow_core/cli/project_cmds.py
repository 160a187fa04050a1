"""`wf init`, `wf quickstart`, `wf status`, `wf runs`, `wf decide`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mlflow_core.cli.output import console, mark, print_json


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(quickstart)
    app.command()(status)
    app.add_typer(runs_app, name="runs")
    app.command()(decide)


def init(directory: Path = typer.Argument(..., help="Project directory (created if missing)."),
         example: str = typer.Option("digits", "--example", "-e",
                                     help="digits: scikit-learn's handwritten digits (offline); "
                                     "patches: Lab 6-style 6-band NPZ patches written to data/patches.")) -> None:
    """Scaffold a project: training_config.yaml, checklists/, .wf/state.json and a .gitignore."""
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(directory, example)
    console.print(f"[green]✔[/] created {project.root} ({example} example)")
    console.print(f"Next: cd {directory} && wf phase setup")


def quickstart(directory: Path = typer.Argument(Path("wf-quickstart"), help="Project directory to create.")) -> None:
    """init (digits) + setup + baseline in one go: a verified, reviewable baseline in under a minute."""
    from mlflow_core.cli.phase_cmds import run_with_display
    from mlflow_core.workflow.engine import tick
    from mlflow_core.workflow.gates import load_checklist
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(directory, "digits")
    console.print(f"[green]✔[/] created {project.root} (digits example)")
    setup = run_with_display(project, "setup")
    if not setup.passed:
        raise typer.Exit(1)
    # The demo's data and config are wf's own, so quickstart confirms the manual setup items for the
    # newcomer; the ticks are recorded in the history with this note.
    for item in load_checklist(project, "reproducibility").items:
        if not item.auto and not item.checked:
            tick(project, "reproducibility", item.id, True, note="ticked by wf quickstart for the bundled digits demo")
    baseline = run_with_display(project, "baseline")
    console.print(f"\nReport: {project.root / baseline.report}")
    console.print(f"Next:   cd {directory} && wf gate check baseline  ·  review the report, then "
                  f"`wf checklist tick post_baseline results_reviewed` and "
                  f"`{baseline.recommendation.command if baseline.recommendation else 'wf decide finalize'}`")
    raise typer.Exit(0 if baseline.passed else 1)


runs_app = typer.Typer(help="The project's runs, newest first; `wf runs diff A B` compares two configs.",
                       no_args_is_help=False, add_completion=False)


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context,
         phase: str = typer.Option(None, "--phase", help="Only this phase's runs."),
         last: int = typer.Option(None, "--last", min=1, metavar="N", help="Only the N newest."),
         as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The project's runs, newest first: phase, status, whether it passed, best validation metric,
    epochs, duration and start. `wf runs diff RUN_A RUN_B` shows what changed between two."""
    if ctx.invoked_subcommand is not None:
        return
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.runs import run_rows

    rows = run_rows(Project.find(), phase, last)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("No runs yet. Start with `wf phase setup`." if phase is None else
                      f"No {phase} runs yet; `wf status` says what to run next.")
        return
    table = Table(title_justify="left")
    for col in ("run", "phase", "status", "passed", "best", "epochs", "duration", "started"):
        table.add_column(col, overflow="fold")
    for r in rows:
        best = r["best"]
        table.add_row(r["run_id"], r["phase"], r["status"],
                      "—" if r["passed"] is None else mark(r["passed"]),
                      f"{best['metric']} {best['value']:.4g} @{best['epoch']}" if best else "—",
                      str(r["epochs"] or "—"), f"{r['duration_s']:.0f} s" if r["duration_s"] else "—",
                      r["started_at"].replace("T", " ")[:19])
    console.print(table)


@runs_app.command("diff")
def runs_diff(run_a: str = typer.Argument(..., help="A run id, or a unique prefix of one."),
              run_b: str = typer.Argument(..., help="Another."),
              as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The config keys whose values differ between two training runs, and each run's best result."""
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.runs import config_diff

    result = config_diff(Project.find(), run_a, run_b)
    if as_json:
        print_json(result)
        return
    if result["changed"]:
        table = Table(title=f"{result['a']} → {result['b']}", title_justify="left")
        for col in ("config key", "A", "B"):
            table.add_column(col, overflow="fold")
        for row in result["changed"]:
            table.add_row(row["key"], repr(row["a"]), repr(row["b"]))
        console.print(table)
    else:
        console.print(f"{result['a']} and {result['b']}: the same config.")
    for label, run_id in (("A", result["a"]), ("B", result["b"])):
        best = result["best"][run_id]
        console.print(f"{label} {run_id}: " + (f"best {best['metric']} {best['value']:.4g} (epoch {best['epoch']})"
                                               if best else "no best result recorded"))


def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Where the project stands: the current phase, each gate's progress and the latest runs."""
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.status import project_status

    info = project_status(Project.find())
    if as_json:
        print_json(info)
        return
    console.print(f"[bold]{info['project']}[/] · current phase: [bold]{info['current_phase'] or '(none yet)'}[/]")
    table = Table(title_justify="left")
    for col in ("#", "phase", "last run", "status", "exit gate", "can start"):
        table.add_column(col, overflow="fold")
    for p in info["phases"]:
        run = p["last_run"] or {}
        gate = p["gate"]
        gate_text = gate.get("error") or f"{mark(gate['passed'])} {gate['checked']}/{gate['total']}"
        table.add_row(str(p["number"]), ("▶ " if p["current"] else "") + p["name"], run.get("run_id", "—"),
                      run.get("status", "—"), gate_text, "yes" if p["can_start"] else "no")
    console.print(table)
    blocked = [p for p in info["phases"] if not p["can_start"] and p["blocked_because"]]
    if blocked:
        console.print(f"Why not {', '.join(p['name'] for p in blocked)}: {blocked[0]['blocked_because']}")
    if info["decision"]:
        d = info["decision"]
        console.print(f"Decision: {d['choice']} → {d['next_phase']} ({d['time']}){': ' + d['reason'] if d['reason'] else ''}")
    for o in info["overrides"]:
        console.print(f"[yellow]Override on record[/]: {o['time']} {o['phase']} — {o['reason']}")
    console.print(f"Next: {info['next']}")


def decide(choice: str = typer.Argument(..., help="finalize, diagnose, optimize (or rebaseline after diagnostics)."),
           reason: str = typer.Option(None, "--reason", "-r", help="Why; recorded in the history and reports.")) -> None:
    """Record the decision point of seed 003: deploy the baseline, or improve it."""
    from mlflow_core.workflow.engine import decide as record_decision
    from mlflow_core.workflow.project import Project

    decision = record_decision(Project.find(), choice, reason)
    console.print(f"[green]✔[/] decision recorded: {decision.choice} → {decision.next_phase}")
    console.print(f"Next: wf phase {decision.next_phase}")
