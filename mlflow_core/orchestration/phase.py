"""`wf phase NAME`: the gate, the run record, the runner, then the outcome (outcome.py) or the
stop (stops.py); `--resume` continues an interrupted run; `--worker` runs trials of a shared study.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_json, remove_stale_temp_files
from mlflow_core.config.loader import config_sha256, load_config
from mlflow_core.errors import (
    GateClosedError,
    PhaseFailedError,
    UserInputError,
)
from mlflow_core.orchestration.committed import unchanged_on_failure
from mlflow_core.orchestration.launch import leading
from mlflow_core.orchestration.outcome import (
    PhaseResult,
    approved_configs,
    record_outcome,
    sync_auto_marks,
)
from mlflow_core.orchestration.preflight import missing_training_stack, preflight
from mlflow_core.orchestration.stops import PhaseSignals, failure, stopped_by_signal
from mlflow_core.orchestration.tracking import end_phase_tracking, open_phase_tracking
from mlflow_core.runners import RunContext, StopPoint, run_runner
from mlflow_core.workflow import fingerprints
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import Fingerprints
from mlflow_core.workflow.gates import entry_verdict
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import (
    DISTRIBUTED_PHASES,
    RESUMABLE_PHASES,
    PhaseDefinition,
    load_phase,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import (
    ProjectState,
    RunRecord,
    load_state,
    now_iso,
    save_state,
)
from mlflow_core.world import world_from_env


def new_run_id(phase: str) -> str:
    return f"{phase}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


STARTED_CONFIG = "logs/started_config.json"  # in the run directory: the resolved config the run started with


def _refuse_a_changed_config(project: Project, run: RunRecord, cfg: Any) -> None:
    """A resumed run continues the config it started with: a sweep resumed with fewer trials, or a
    final training with other seeds, would be neither the run that started nor a new one."""
    path = project.inside(run.dir) / STARTED_CONFIG
    try:
        started = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a run started by an earlier wf: nothing to compare with
        return
    changed = fingerprints.config_changes(fingerprints.flatten(started),
                                          fingerprints.flatten(cfg.model_dump(mode="json")), limit=8)
    if changed:
        raise UserInputError(f"{project.relative(project.config_path)} changed since run {run.run_id} started: "
                             f"{changed}. A resumed run continues the config it started with.",
                             hint=f"Restore those values and run `wf phase {run.phase} --resume`, or start a new "
                             f"run with the new config: `wf phase {run.phase}`.")


def _resumable_run(project: Project, state: ProjectState, phase: str) -> tuple[RunRecord, Path | None]:
    """The latest run of `phase`, if it was interrupted, and the baseline's resume checkpoint. The
    other phases' runners find their trials' and seeds' own checkpoints in the run directory."""
    run = next((r for r in reversed(state.runs) if r.phase == phase), None)
    # "running" while we hold the project lock: its process died (kill -9, power loss) mid-run
    if run is None or run.status not in ("interrupted", "running"):
        raise UserInputError(f"no interrupted {phase} run to resume"
                             + (f": the latest, {run.run_id}, is {run.status}" if run is not None else "") + ".",
                             hint=f"Run `wf phase {phase}` to start a new run.")
    later = [r for r in state.runs if r.phase != phase and r.finished_at and r.started_at > run.started_at
             and r.status != "failed_input"]  # bad input: nothing ran, the project did not move
    if later:  # the project went on without it: continuing it now would take the project back
        released = next((e for e in reversed(state.history) if e.event == "release"), None)
        raise UserInputError(f"run {run.run_id} of {phase} stopped before the project went on to "
                             f"{', '.join(dict.fromkeys(r.phase for r in later))} (run {later[-1].run_id})"
                             + (f", and {released.model} version {released.version} was released"
                                if released is not None else "")
                             + f"; resuming it now would take the project back to {phase} with a stale run.",
                             hint=f"Start a new run with `wf phase {phase}` if the project should go back "
                                  "there; `wf status` shows where it stands.")
    if phase != "baseline":
        return run, None
    saved = (run.summary.get("resume") or {}).get("path")
    path = project.inside(run.dir) / (saved or "checkpoints/resume.pt")
    if path.is_file():
        return run, path
    if saved:  # it stopped at a resume point that is gone now
        raise UserInputError(f"{project.relative(path)}: the resume checkpoint of {run.run_id} is missing.",
                             hint=f"Run `wf phase {phase}` to start a new run.")
    # it stopped before its first resume point (a signal or kill during start-up or its first steps):
    # the same run starts again from step 0, which a seeded run reproduces exactly
    return run, None


def run_phase(project: Project, phase: str, *, override_reason: str | None = None,
              on_progress: Callable[[Any], None] | None = None,
              on_message: Callable[[str], None] | None = None, resume: bool = False,
              deadline: float | None = None) -> PhaseResult:
    """Run a phase: the gate, the run record, the runner, evidence, report. Under a DDP launcher
    this is rank 0, which leads the other ranks (launch.follow) through the training.
    `deadline` (time.monotonic()): training stops at the first step past it, resumably, as on a
    signal (`wf phase NAME --time-limit`)."""

    world = world_from_env()
    if world is None:
        return _run_phase(project, phase, override_reason, on_progress, on_message, resume, deadline=deadline)
    with leading(world, project.config_path) as announce:
        if phase not in DISTRIBUTED_PHASES:
            raise UserInputError(f"`wf phase {phase}` runs in one process; data-parallel phases: "
                                 f"{', '.join(DISTRIBUTED_PHASES)}.")
        return _run_phase(project, phase, override_reason, on_progress, on_message, resume, world, announce,
                          deadline)


def run_sweep_worker(project: Project, override_reason: str | None = None,
                     on_progress: Callable[[Any], None] | None = None,
                     on_message: Callable[[str], None] | None = None, deadline: float | None = None) -> int:
    """`wf phase optimization --worker`: trials of the project's study, and nothing else. It takes no
    project lock and records nothing in .wf/ (the final `wf phase optimization`, run once, records
    the phase); it checks the entry gate as that run will. The exit code: 0, or 128 + the signal."""
    from mlflow_core.runners import SubRunInterrupted
    from mlflow_core.runners.optimization import run_worker

    say = on_message or (lambda _m: None)
    cfg = load_config(project.config_path)
    missing = missing_training_stack()
    if missing:
        raise UserInputError(f"`wf phase optimization --worker` needs the training stack, and {', '.join(missing)} "
                             "is not installed.", hint="Install it with `pip install 'wf-phases[train]'`.")
    preflight(project, cfg, "optimization")
    verdict = entry_verdict(project, load_state(project), "optimization")
    if not verdict.allowed:
        if override_reason is None or not override_reason.strip():
            raise GateClosedError(f"cannot start an optimization worker: {verdict.reason}.",
                                  hint=f"{verdict.unblock_hint()}, or give the worker "
                                  "`--override-gate \"reason\"` too (the final `wf phase optimization` records it).")
        say(f"Gate closed, overridden for this worker: {verdict.reason}")
    run_id = f"optimization-worker-{socket.gethostname()}-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}"
    ctx = RunContext(project, cfg, config_sha256(project.config_path), run_id, project.runs_dir / run_id,
                     on_progress or (lambda _p: None), say, deadline=deadline)
    if cfg.monitoring.mlflow:
        from mlflow_core.monitoring.mlflow_runs import PhaseRun

        ctx.tracking = PhaseRun.for_sweep_worker(project.root, cfg, say)
    try:
        ran, held = run_worker(ctx)
    except SubRunInterrupted as stop:
        say("Worker stopped by a signal; its trial is enqueued again for any worker or `wf phase optimization`")
        return 128 + (stop.signum or 2)
    say(f"Worker ran {ran} trial(s); the study holds {held} of {cfg.optimization.n_trials}. "
        + ("Run `wf phase optimization` once to compare the best with the baseline and write the report."
           if held >= cfg.optimization.n_trials else "Other workers are still running trials."))
    return 0


@locked("wf phase {phase}")
def _run_phase(project: Project, phase: str, override_reason: str | None,
               on_progress: Callable[[Any], None] | None, on_message: Callable[[str], None] | None,
               resume: bool, world: Any = None, announce: Any = None, deadline: float | None = None) -> PhaseResult:

    say = on_message or (lambda _m: None)
    state = load_state(project)
    definition = load_phase(phase, project.root)
    cfg = load_config(project.config_path)  # bad config: exit 2 before anything is written
    missing = missing_training_stack()
    if missing:
        raise UserInputError(f"`wf phase {phase}` needs the training stack, and {', '.join(missing)} "
                             "is not installed; nothing was changed.",
                             hint="Install it with `pip install 'wf-phases[train]'` (the README's install includes it).")
    preflight(project, cfg, phase)  # the packages, the project's model and data code: exit 2, nothing written
    # the stop signals wait from here until the run is recorded, then stop it (PhaseSignals)
    with unchanged_on_failure(project), PhaseSignals() as signals:
        result = _start_or_resume(project, state, definition, cfg, override_reason, on_progress, say, resume,
                                  world, announce, deadline, signals)
        signals.raise_deferred(phase, state.runs[-1] if state.runs else None)
        return result


def _start_or_resume(project: Project, state: ProjectState, definition: PhaseDefinition, cfg: Any,
                     override_reason: str | None, on_progress: Callable[[Any], None] | None,
                     say: Callable[[str], None], resume: bool, world: Any, announce: Any,
                     deadline: float | None, signals: PhaseSignals) -> PhaseResult:
    phase = definition.name
    if resume:
        if phase not in RESUMABLE_PHASES:
            raise UserInputError(f"`wf phase {phase} --resume` is not supported; resumable: "
                                 f"{', '.join(RESUMABLE_PHASES)}.")
        return _resume_phase(project, state, phase, cfg, on_progress, say, signals, world, announce, deadline)

    # -- entry gate -----------------------------------------------------------------------------
    verdict = entry_verdict(project, state, phase)
    origin = verdict.origin
    if not verdict.allowed:
        if override_reason is None:
            raise GateClosedError(f"cannot start {phase}: {verdict.reason}.",
                                  hint=f"{verdict.unblock_hint()}, or override explicitly "
                                  f"with `wf phase {phase} --override-gate \"reason\"` (recorded in the history "
                                  "and shown in every later report).")
        if not override_reason.strip():
            raise UserInputError("--override-gate needs a reason")
        state.record("gate_override", phase=phase, gate=origin, reason=override_reason.strip(),
                     open_items=[i.id for i in verdict.gate.open_items] if verdict.gate else [],
                     blocked_because=verdict.reason)
        say(f"Gate overridden: {verdict.reason}")
    elif verdict.gate is not None:
        state.record("gate_checked", phase=phase, gate=origin, passed=True)

    # what this run verifies: read before it starts (a data folder that is gone is exit 2 here)
    verified = _fingerprints(project, state, phase, cfg, say)

    # -- run record -----------------------------------------------------------------------------
    run_id = new_run_id(phase)
    run_dir = project.runs_dir / run_id
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    # the project moves to this phase when the run records its outcome, not before: a run that
    # fails, or stops, leaves the project where it stood
    run = RunRecord(run_id=run_id, phase=phase, status="running", started_at=now_iso(),
                    dir=project.relative(run_dir), entered_from=origin, pid=os.getpid(), host=socket.gethostname())
    state.runs.append(run)
    state.record("phase_started", phase=phase, run_id=run_id)
    save_state(project, state)
    # after the record: a kill in this write leaves a recorded run, whose directory the next command sweeps
    atomic_write_json(run_dir / STARTED_CONFIG, cfg.model_dump(mode="json"))  # what --resume must continue

    say(f"run {run_id} started")
    return _execute(project, state, definition, run, cfg, RunContext(
        project, cfg, config_sha256(project.config_path), run_id, run_dir, on_progress or (lambda _p: None), say,
        world=world, announce=announce or (lambda _plan: None), deadline=deadline), verified, signals)


def _fingerprints(project: Project, state: ProjectState, phase: str, cfg: Any,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """The config, data, code and packages this run works on, as its gate will vouch for them.
    Setup hashes every data file; later phases check the data against the latest manifest on the
    project's path, re-hashing only what changed (the entry gate has refused drifted data already,
    unless overridden)."""
    reference = None
    for earlier in reversed(state.path()):
        evidence = read_evidence(project, earlier)
        fps = evidence.facts.fingerprints if evidence and evidence.intact else None
        data = (fps.data if fps else None) or {}
        if data.get("manifest"):
            reference = data["manifest"]
            break
    if phase == "setup" and cfg.data.source in ("npz", "imagefolder", "csv"):
        say(f"Fingerprinting the data in {cfg.data.path} (every file hashed once)")
    return fingerprints.capture(cfg, project.root, phase, reference_manifest=reference)


def _resume_phase(project: Project, state: ProjectState, phase: str, cfg: Any,
                  on_progress: Callable[[Any], None] | None, say: Callable[[str], None], signals: PhaseSignals,
                  world: Any = None, announce: Any = None, deadline: float | None = None) -> PhaseResult:
    """Continue the interrupted run where it stopped: same run id, directory and record."""

    run, path = _resumable_run(project, state, phase)
    _refuse_a_changed_config(project, run, cfg)
    remove_stale_temp_files(project.inside(run.dir), recursive=True)  # a kill -9 mid-write leaves these
    run.status, run.finished_at, run.passed = "running", None, None
    run_dir = project.inside(run.dir)
    where = project.relative(path if path is not None else run_dir)
    state.record("phase_resumed", phase=phase, run_id=run.run_id, checkpoint=where)
    save_state(project, state)
    say(f"run {run.run_id} resumed from {where}" if path is not None or phase != "baseline" else
        f"run {run.run_id} starts again from step 0: it stopped before its first resume point")
    verified = _fingerprints(project, state, phase, cfg, say)
    ctx = RunContext(project, cfg, config_sha256(project.config_path), run.run_id, run_dir,
                     on_progress or (lambda _p: None), say, resume_from=path, resuming=True, world=world,
                     announce=announce or (lambda _plan: None), deadline=deadline)
    return _execute(project, state, load_phase(phase, project.root), run, cfg, ctx, verified, signals)


def _execute(project: Project, state: ProjectState, definition: PhaseDefinition, run: RunRecord, cfg: Any,
             ctx: Any, verified: dict[str, Any], signals: PhaseSignals) -> PhaseResult:
    """Run the phase's runner under the lock the caller holds, then record what it produced."""

    phase, run_id, run_dir = definition.name, run.run_id, ctx.run_dir
    # -- run ------------------------------------------------------------------------------------
    handler = logging.FileHandler(run_dir / "logs" / "training.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("wf")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    say = ctx.on_message

    def say_and_log(text: str) -> None:  # the log keeps every message, whatever becomes of the terminal
        logger.info("%s", text)
        say(text)

    ctx.on_message = say_and_log
    try:
        signals.arm()  # the run is recorded: a signal now stops it (one that came before, at once)
        ctx.tracking = open_phase_tracking(project, cfg, state, run, verified, ctx.resuming, say_and_log)
        if ctx.tracking is not None:
            save_state(project, state)  # the MLflow run's id, for --resume
        output = run_runner(phase, ctx)
    except BaseException as exc:
        error = failure(project, state, phase, run, ctx, exc, logger, handler)
        if error is exc:
            raise
        raise error from (exc if isinstance(error, PhaseFailedError) else None)
    finally:
        logger.removeHandler(handler)
        handler.close()

    signals.deferring()  # from here the run has an outcome to record: a signal waits for it
    # stopped on a signal (or a trial or seed run inside the phase did): nothing to report yet, and
    # the run the gate judges stays the last one that ran to its end
    if output.partial or output.status == "interrupted":
        end_phase_tracking(ctx.tracking, "KILLED")
        run.status, run.finished_at, run.passed = "interrupted", now_iso(), False
        stop = output.stopped or StopPoint(None, None)
        run.summary["resume"] = stop.resume
        state.record("phase_finished", phase=phase, run_id=run_id, status=run.status)
        save_state(project, state)
        raise stopped_by_signal(project, state, phase, run_id, stop)

    # -- evidence, report, criteria ---------------------------------------------------------------
    for event, data in output.events:
        state.record(event, **data)
    state.current_phase = phase  # the run has an outcome: the project stands here now
    state.entered_from[phase] = (run.entered_from if "entered_from" in run.model_fields_set
                                 else state.entered_from.get(phase))
    output.facts.fingerprints = Fingerprints(**verified, approves=approved_configs(project, phase, output.facts))
    try:
        result = record_outcome(project, state, definition, run, output.facts, cfg.project.name, output.status)
        result.notes = output.notes
        save_state(project, state)
        sync_auto_marks(project, state, phase, result.evidence)
    except BaseException:
        end_phase_tracking(ctx.tracking, "FAILED")
        raise
    end_phase_tracking(ctx.tracking, "FINISHED", project, run, output.facts)
    return result
