"""`wf init`, `wf quickstart`, `wf status`, `wf runs`, `wf decide`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
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
                                     "patches: 6-band Sentinel-2 NPZ patches written to data/patches.")) -> None:
    """Scaffold a project: training_config.yaml, checklists/, .wf/state.json and a .gitignore."""
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(directory, example)
    console.print(f"[green]✔[/] created {project.root} ({example} example)")
    console.print(f"Next: {_cd(project.root)}wf phase setup")


def _cd(root: Path) -> str:
    """`cd DIR && ` to prefix a next command with, unless DIR is where the user is."""
    import shlex

    if root == Path.cwd().resolve():
        return ""
    try:
        shown = str(root.relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(root)
    return f"cd {shlex.quote(shown)} && "


def quickstart(directory: Path = typer.Argument(Path("wf-quickstart"), help="Project directory to create."),
               mlflow: bool = typer.Option(False, "--mlflow", help="Track the runs in MLflow too "
                                           "(monitoring.mlflow: true, in the project's mlflow.db; needs wf-phases[mlflow]).")
               ) -> None:
    """init (digits) + setup + baseline in one go: a verified, reviewable baseline in under a minute."""
    from mlflow_core.cli.phase_cmds import run_with_display
    from mlflow_core.orchestration.checklists import tick
    from mlflow_core.workflow.gates import load_checklist
    from mlflow_core.workflow.scaffold import init_project

    if mlflow:  # before anything is created: a missing extra is said first
        from mlflow_core.monitoring.mlflow_store import require_mlflow

        require_mlflow()
    project = _earlier_quickstart(directory)
    if project is None:
        project = init_project(directory, "digits", settings={"monitoring.mlflow": "true"} if mlflow else None)
        console.print(f"[green]✔[/] created {project.root} (digits example"
                      + (", tracked in MLflow)" if mlflow else ")"))
    if not _passed(project, "setup"):
        setup = run_with_display(project, "setup")
        if not setup.passed:
            raise typer.Exit(1)
    # The demo's data and config are wf's own, so quickstart ticks the manual setup items for the
    # newcomer, as itself: every gate check and report says "ticked by wf quickstart", not by a person.
    by = {"kind": "command", "name": "wf quickstart", "via": "wf quickstart (the bundled digits demo)"}
    for item in load_checklist(project, "reproducibility").items:
        if not item.auto and not item.checked:
            tick(project, "reproducibility", item.id, True, note="ticked by wf quickstart for the bundled digits demo",
                 by=by)
    baseline = run_with_display(project, "baseline")
    console.print(f"\nReport: {project.root / baseline.report}")
    console.print(f"Next:   {_cd(project.root)}wf gate check baseline  ·  review the report, then "
                  f"`wf checklist tick post_baseline results_reviewed` and "
                  f"`{baseline.recommendation.command if baseline.recommendation else 'wf decide finalize'}`")
    raise typer.Exit(0 if baseline.passed else 1)


def _earlier_quickstart(directory: Path) -> object | None:
    """The project an earlier `wf quickstart DIR` created (one that failed or was stopped half-way
    continues where it stands); None when DIR is not a wf project yet."""
    from mlflow_core.config.loader import load_config
    from mlflow_core.errors import UserInputError
    from mlflow_core.workflow.project import Project

    root = directory.resolve()
    if not (root / ".wf" / "state.json").is_file():
        return None
    project = Project(root)
    finished = _passed(project, "baseline")
    if finished or load_config(project.config_path).data.source != "digits":
        raise UserInputError(f"{root} is already a wf project"
                             + (" with a baseline that passed" if finished else ", not the quickstart's digits demo")
                             + "; nothing was changed.",
                             hint=f"See where it stands with `{_cd(root)}wf status`, or run the quickstart in a new "
                                  "directory: `wf quickstart DIR`.")
    console.print(f"Continuing the quickstart in {root}, created before: what passed is not run again.")
    return project


def _passed(project: object, phase: str) -> bool:
    from mlflow_core.workflow.state import load_state

    return any(r.phase == phase and r.passed for r in load_state(project).runs)


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
        table.add_row(r["run_id"] + (" ◆" if r["judged"] else ""), r["phase"], r["status"],
                      "—" if r["passed"] is None else mark(r["passed"]), best_text(r["best"]),
                      str(r["epochs"] or "—"), f"{r['duration_s']:.0f} s" if r["duration_s"] else "—",
                      r["started_at"].replace("T", " ")[:19])
    console.print(table)
    if any(r["judged"] for r in rows):
        console.print("◆ the run its phase's gate judges (`wf runs select RUN` chooses another)")


def best_text(best: dict | None) -> str:
    """A run's best result, whatever its phase recorded: a validation metric at an epoch (training
    runs), a trial's objective (optimization), nothing (setup, diagnostics)."""
    if not isinstance(best, dict) or not isinstance(best.get("value"), (int, float)):
        return "—"
    where = f" @{best['epoch']}" if best.get("epoch") is not None else (
        f" (trial {best['trial']})" if best.get("trial") is not None else "")
    return f"{best.get('metric') or 'objective'} {best['value']:.4g}{where}"


@runs_app.command("select")
def runs_select(run: str = typer.Argument(..., help="A run id, or a unique prefix of one.")) -> None:
    """Make an earlier run that ran to its end the one its phase's gate judges: its evidence and report
    come back, and the choice is recorded in the history (by default a gate judges the latest run of
    its phase that ran to its end; an interrupted or crashed run never replaces it)."""
    from mlflow_core.orchestration.runs import select_run
    from mlflow_core.workflow.project import Project

    chosen = select_run(Project.find(), run)
    console.print(f"[green]✔[/] the {chosen.phase} gate now judges run {chosen.run_id}; "
                  f"report rendered again. Next: wf gate check {chosen.phase}")


@runs_app.command("diff")
def runs_diff(run_a: str = typer.Argument(..., help="A run id, or a unique prefix of one."),
              run_b: str = typer.Argument(..., help="Another."),
              as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The config keys whose values differ between two training runs, and each run's best result. A
    run is its id (or a unique prefix), or RUN/PATH for a trial, comparison or final run inside it."""
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
        best = best_text(result["best"][run_id])
        status = result["status"][run_id]
        console.print(f"{label} {run_id}: " + (f"best {best}" if best != "—" else "no best result recorded")
                      + ("" if status in ("completed", "early_stopped") else f" ({status})"))


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
        gate_text = escape(gate["error"]) if gate.get("error") else (f"{mark(gate['passed'])} {gate['checked']}/{gate['total']}"
                                          + (" re-opened" if gate.get("drift") else "")
                                          + (f" ({len(gate['waived'])} waived)" if gate.get("waived") else ""))
        table.add_row(str(p["number"]), ("▶ " if p["current"] else "") + p["name"], run.get("run_id", "—"),
                      run.get("status", "—"), gate_text, "yes" if p["can_start"] else "no")
    console.print(table)
    for p in info["phases"]:
        for drift in p["gate"].get("drift") or []:
            console.print(f"[red]{p['name']} gate re-opened[/] ({drift['kind']}): {escape(drift['detail'])}")
        for w in p["gate"].get("waived") or []:
            console.print(f"[yellow]Waiver on record[/]: {p['name']} {w['id']} by {w['by']} at {w['time']} — "
                          f"{escape(w['reason'])}")
    blocked = [p for p in info["phases"] if not p["can_start"] and p["blocked_because"]]
    if blocked:
        console.print(f"Why not {', '.join(p['name'] for p in blocked)}: {escape(blocked[0]['blocked_because'])}")
    if info["decision"]:
        d = info["decision"]
        console.print(f"Decision: {d['choice']} → {d['next_phase']} ({d['time']}){': ' + d['reason'] if d['reason'] else ''}")
    for o in info["overrides"]:
        console.print(f"[yellow]Override on record[/]: {o['time']} {o['phase']} — {o['reason']}")
    if info["release"]:
        r = info["release"]
        console.print(f"Released: {r['model']} version {r['version']} as @{r['alias']} by {r['by']} at {r['time']}"
                      + (f" [yellow]past closed gates ({', '.join(r.get('gates_closed') or [])}): {r['override']}[/]"
                         if r.get("override") else ""), highlight=False)
    console.print(f"Next: {escape(info['next'])}")


def decide(choice: str = typer.Argument(..., help="finalize, diagnose, optimize (or rebaseline after diagnostics)."),
           reason: str = typer.Option(None, "--reason", "-r", help="Why; recorded in the history and reports.")) -> None:
    """Record the decision after the baseline: deploy the baseline, or improve it."""
    from mlflow_core.orchestration.decide import decide as record_decision
    from mlflow_core.workflow.gates import entry_verdict
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import load_state

    project = Project.find()
    decision, repeated = record_decision(project, choice, reason)
    if repeated:
        console.print(f"[green]✔[/] already decided at {decision.time} on run {decision.after_run}: "
                      f"{decision.choice} → {decision.next_phase} (nothing new recorded)")
    else:
        console.print(f"[green]✔[/] decision recorded: {decision.choice} → {decision.next_phase}")
    verdict = entry_verdict(project, load_state(project), decision.next_phase)
    if verdict.allowed:
        console.print(f"Next: wf phase {decision.next_phase}")
    else:  # the decision is one item of the gate: say what else it waits for
        console.print(escape(f"Next: `{verdict.unblock}`: the way into {decision.next_phase} is still closed "
                             f"({verdict.reason}); then `wf phase {decision.next_phase}`"), highlight=False)
