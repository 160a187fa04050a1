"""`wf phase NAME` and `wf report PHASE`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlflow_core.cli.output import console, mark


def register(app: typer.Typer) -> None:
    app.command()(phase)
    app.command()(report)


PLAIN_PROGRESS_EVERY_S = 30.0  # default; WF_PROGRESS_EVERY_S changes it


def _plain_progress_interval() -> float:
    from mlflow_core.errors import UserInputError

    text = os.environ.get("WF_PROGRESS_EVERY_S", "")
    try:
        value = float(text) if text else PLAIN_PROGRESS_EVERY_S
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserInputError(f"WF_PROGRESS_EVERY_S must be a number of seconds (0 or more), got {text!r}.")
    return value


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _Display:
    """Renders the trainer's progress events: loss, metric, samples/s, ETA and, on GPU, utilization.
    Where output is not a terminal (a SLURM log, CI) a live bar shows nothing until the end, so a
    plain progress line is printed every WF_PROGRESS_EVERY_S seconds instead."""

    def __init__(self, progress, phase: str):
        self.progress, self.phase = progress, phase
        self.task = None
        self.started = False
        self.plain_every_s = None if progress.console.is_terminal else _plain_progress_interval()
        self.plain_last: float | None = None

    def start(self) -> None:
        """The display (its rule, then the live bar) appears once the entry gate has let the phase
        start: a refusal before it is the error alone."""
        if not self.started:
            self.progress.console.rule(f"wf phase {self.phase}")
            self.progress.start()
            self.started = True

    def message(self, text: str) -> None:
        self.start()
        self.progress.console.print(f"· {text}")

    def update(self, p) -> None:
        self.start()
        total = p.epochs * p.steps_per_epoch
        if self.task is None:
            self.task = self.progress.add_task("training", total=total, info="")
        elif p.global_step < self.progress.tasks[0].completed or total != self.progress.tasks[0].total:
            self.progress.reset(self.task, total=total)  # the next run of the phase (a trial, a seed) began
        if p.stage == "val":
            val = f"val loss {p.loss:.4g}" if isinstance(p.loss, float) else ""
            acc = f" acc {p.metric:.2%}" if isinstance(p.metric, float) else ""
            self.progress.console.print(f"  epoch {p.epoch}/{p.epochs}  {val}{acc}")
            return
        info = f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4g}"
        if p.samples_per_s:
            info += f" · {p.samples_per_s:,.0f} samples/s"
        if p.eta_s is not None:
            info += f" · ETA {_clock(p.eta_s)}"
        if p.gpu:
            info += f" · GPU {p.gpu['utilization']:.0f} % {p.gpu['memory_used_mib']:,.0f} MiB"
        self.progress.update(self.task, completed=p.global_step, info=info)
        now = time.monotonic()
        if self.plain_every_s is not None and (self.plain_last is None or now - self.plain_last >= self.plain_every_s):
            self.plain_last = now
            self.progress.console.print(f"  step {p.global_step:,}/{total:,} · {info}", highlight=False)


def run_with_display(project, name: str, override_reason: str | None = None, resume: bool = False,
                     deadline: float | None = None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mlflow_core.orchestration.phase import run_phase

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    display = _Display(Progress(*columns, console=console, transient=False), name)
    try:
        result = run_phase(project, name, override_reason=override_reason,
                           on_progress=display.update, on_message=display.message, resume=resume,
                           deadline=deadline)
    finally:
        if display.started:
            display.progress.stop()
    for c in result.criteria:
        console.print(f"{mark(c['passed'])} {c['text']}: {c['detail']}", highlight=False)
    rec = result.recommendation
    verdict = "[green]passed[/]" if result.passed else "[red]did not pass its success criteria[/]"
    console.print(f"{name} {verdict} · run {result.run_id} · status {result.status} · report {result.report}")
    if rec:
        console.print(f"Recommended: {rec.verdict} → {rec.next_phase}: {rec.reason}"
                      + (f" (playbook {rec.playbook})" if rec.playbook else ""))
    return result


PhaseName = Annotated[str, typer.Argument(help="setup, baseline, diagnostics, optimization or finalization.")]
OverrideGate = Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer reads the annotation at run time)
    "--override-gate", metavar="REASON", help="Start even though the entry gate is closed; the reason is "
    "recorded and shown in every later report and gate check.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the latest interrupted run of the phase "
                                      "exactly where it stopped (baseline, optimization, finalization).")]
Smoke = Annotated[bool, typer.Option("--smoke", help="Run the phase's whole pipeline with two training and "
                                     "two validation steps per run, in a throwaway directory, recording nothing: "
                                     "checks that the config still runs.")]
Processes = Annotated[int, typer.Option("--nproc-per-node", min=1, metavar="N",
                                        help="Data-parallel training (DDP) in N processes on this machine: "
                                        "one per GPU, or gloo on CPUs (baseline).")]
TimeLimit = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--time-limit", metavar="DURATION", help="Stop training resumably this long after the command starts "
    "(8h30m, 45m, 2:30:00), 60 s early to save: for a Kaggle session's 9 hours or an allocation's end. Exit 124; "
    "continue with --resume.")]
Worker = Annotated[bool, typer.Option("--worker", help="optimization: run trials of the project's study "
                                      "only, next to other workers on this or other machines (a shared "
                                      "optimization.storage), until it holds n_trials; then `wf phase "
                                      "optimization` once compares and reports. Records nothing itself.")]


def phase(name: PhaseName, override_gate: OverrideGate = None, resume: Resume = False, smoke: Smoke = False,
          nproc_per_node: Processes = 1, time_limit: TimeLimit = None, worker: Worker = False) -> None:
    """Run a phase (or, with --smoke, check that it runs). Exit 0 success · 1 failed its success criteria · 2 bad input · 3 entry gate closed ·
    4 another wf command holds the project · 5 a write was refused (disk full, read-only) · 6 a data-parallel run lost
    a process · 124 stopped at --time-limit · 129/130/138/143 stopped by SIGHUP/SIGINT/SIGUSR1/SIGTERM (resumable
    with --resume)."""
    from mlflow_core.orchestration.phase_modes import phase_mode
    from mlflow_core.workflow.project import Project

    mode = phase_mode(name, override_gate=override_gate, resume=resume, smoke=smoke, nproc_per_node=nproc_per_node,
                      time_limit=time_limit, worker=worker)
    if mode.kind == "worker":
        from mlflow_core.orchestration.phase import run_sweep_worker
        raise typer.Exit(run_sweep_worker(Project.find(), override_gate, None,
                                          lambda m: console.print(f"· {m}", highlight=False), mode.deadline))
    if mode.kind == "follow":  # a DDP rank other than 0: it follows rank 0's lead
        from mlflow_core.orchestration.launch import follow
        raise typer.Exit(follow(Project.find(), mode.world))
    if mode.kind == "launch":
        from mlflow_core.orchestration.launch import launch_local
        raise typer.Exit(launch_local(mode.launch_args, nproc_per_node))
    if mode.kind == "smoke":
        raise typer.Exit(0 if smoke_with_display(Project.find(), name) else 1)
    raise typer.Exit(0 if run_with_display(Project.find(), name, override_gate, resume, mode.deadline).passed else 1)


def smoke_with_display(project, name: str) -> bool:
    from rich.table import Table

    from mlflow_core.orchestration.smoke import smoke_phase

    console.rule(f"wf phase {name} --smoke")
    result = smoke_phase(project, name, on_message=lambda text: console.print(f"· {text}", highlight=False))
    table = Table("run", "status", "steps", "train loss", "val loss", "precision")
    for r in result.runs:
        loss = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r["train_loss"], r["val_loss"])]
        table.add_row(r["run"], r["status"], str(r["steps"]), *loss, r["precision"])
    if result.runs:
        console.print(table)
    verdict = "[green]runs[/]" if result.passed else f"[red]does not run cleanly[/] ({result.status})"
    console.print(f"{name} smoke test {verdict} · {len(result.runs)} training run(s) · {result.duration_s:.1f} s · "
                  "nothing recorded")
    return result.passed


def report(name: str = typer.Argument(..., help="A phase, whose report to render again; `summary`, a markdown "
                                       "digest of the project for a pull request (printed); or `comment`, that digest "
                                       "posted as one pull-request comment, updated in place (needs GitHub's `gh`)."),
           output: Path = typer.Option(None, "--output", "-o", help="summary: write it to this file instead.")) -> None:
    """Render a phase's report again from its recorded evidence and run files (no training, no torch);
    or summarise the whole project for review."""
    from mlflow_core.workflow.project import Project

    project = Project.find()
    if name in ("summary", "comment"):
        from mlflow_core.reports.summary import post_comment, project_summary

        if name == "comment":
            console.print(f"[green]✔[/] {post_comment(project)}")
            return
        text = project_summary(project)
        if output is not None:
            from mlflow_core.atomic import atomic_write_text

            atomic_write_text(output, text)
            console.print(f"[green]✔[/] {output} ({len(text.encode()):,} bytes)")
        else:
            print(text, end="")
        return
    from mlflow_core.orchestration.report import rerender_report

    result = rerender_report(project, name)
    console.print(f"[green]✔[/] {result.report}")
