"""Running a phase: the entry gate (or a recorded override), a run record, the runner, evidence,
the report, success criteria and the checklist's auto marks. Also `wf decide`, `wf checklist tick`
and `wf report`: every command that changes a project goes through here, under the project lock."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_json, remove_stale_temp_files
from mlflow_core.config.loader import config_sha256, load_config
from mlflow_core.errors import (
    ChecklistError,
    GateClosedError,
    PhaseFailedError,
    RankLostError,
    RunHangupError,
    RunInterruptedError,
    RunPreemptedError,
    RunTerminatedError,
    RunTimeLimitError,
    StorageError,
    UserInputError,
    WfError,
    did_you_mean,
)
from mlflow_core.orchestration.committed import CommittedFiles
from mlflow_core.orchestration.launch import leading
from mlflow_core.orchestration.preflight import preflight
from mlflow_core.orchestration.slurm import requeue_job, slurm_job_id
from mlflow_core.orchestration.tracking import end_phase_tracking, open_phase_tracking
from mlflow_core.reports.phase_reports import render_phase_report
from mlflow_core.runners import RunContext, StopPoint, run_runner
from mlflow_core.workflow import fingerprints
from mlflow_core.workflow.checklist import set_marks
from mlflow_core.workflow.checks import CheckContext, run_check
from mlflow_core.workflow.evidence import archived_evidence_path, read_evidence, write_evidence
from mlflow_core.workflow.facts import DiagnosticsFacts, FileRef, Fingerprints, OptimizationFacts, PhaseFacts
from mlflow_core.workflow.gates import entry_verdict, evaluate_gate, load_checklist
from mlflow_core.workflow.phases import (
    DECISIONS,
    DISTRIBUTED_PHASES,
    PHASE_ORDER,
    PHASES,
    RESUMABLE_PHASES,
    PhaseDefinition,
    load_phase,
    phase_gated_by,
    required_items,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.recommend import Recommendation
from mlflow_core.workflow.runs import find_run
from mlflow_core.workflow.state import (
    Decision,
    ProjectState,
    RunRecord,
    changing_state,
    load_state,
    now_iso,
    project_lock,
    save_state,
    who,
)
from mlflow_core.world import world_from_env


@dataclass
class PhaseResult:
    phase: str
    run_id: str
    status: str
    passed: bool
    criteria: list[dict[str, Any]]
    report: str
    recommendation: Recommendation | None = None
    overridden: bool = False
    notes: list[str] = field(default_factory=list)


def missing_training_stack() -> list[str]:
    """The packages of the `train` extra that cannot be imported (found without importing them)."""
    import importlib.util

    missing = []
    for module in ("torch", "torchvision"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ValueError, ImportError):
            found = False
        if not found:
            missing.append(module)
    return missing


def new_run_id(phase: str) -> str:
    return f"{phase}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def evaluate_criteria(project: Project, state: ProjectState, definition: PhaseDefinition) -> list[dict[str, Any]]:
    evidence = read_evidence(project, definition.name)
    out = []
    for c in definition.success_criteria:
        result = run_check(c.check, CheckContext(project, state, definition.name, evidence, c.params))
        out.append({"id": c.id, "text": c.text, "check": c.check, "passed": result.passed, "detail": result.detail})
    return out




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
    if phase != "baseline":
        return run, None
    path = project.inside(run.dir) / ((run.summary.get("resume") or {}).get("path") or "checkpoints/resume.pt")
    if not path.is_file():
        raise UserInputError(f"{project.relative(path)}: the resume checkpoint of {run.run_id} is missing.",
                             hint=f"Run `wf phase {phase}` to start a new run.")
    return run, path


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
                             "is not installed.", hint="Install it with `pip install 'wf[train]'`.")
    preflight(project, cfg, "optimization")
    verdict = entry_verdict(project, load_state(project), "optimization")
    if not verdict.allowed:
        if override_reason is None or not override_reason.strip():
            raise GateClosedError(f"cannot start an optimization worker: {verdict.reason}.",
                                  hint=f"Run `{verdict.unblock}` to see what is left, or give the worker "
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


def _run_phase(project: Project, phase: str, override_reason: str | None,
               on_progress: Callable[[Any], None] | None, on_message: Callable[[str], None] | None,
               resume: bool, world: Any = None, announce: Any = None, deadline: float | None = None) -> PhaseResult:

    say = on_message or (lambda _m: None)
    with project_lock(project, f"wf phase {phase}"):
        state = load_state(project)
        definition = load_phase(phase, project.root)
        cfg = load_config(project.config_path)  # bad config: exit 2 before anything is written
        missing = missing_training_stack()
        if missing:
            raise UserInputError(f"`wf phase {phase}` needs the training stack, and {', '.join(missing)} "
                                 "is not installed; nothing was changed.",
                                 hint="Install it with `pip install 'wf[train]'` (the README's install includes it).")
        preflight(project, cfg, phase)  # the packages, the project's model and data code: exit 2, nothing written
        with _unchanged_on_failure(project):
            return _start_or_resume(project, state, definition, cfg, override_reason, on_progress, say, resume,
                                    world, announce, deadline)


@contextmanager
def _unchanged_on_failure(project: Project) -> Iterator[None]:
    kept = CommittedFiles.keep(project)
    try:
        yield
    except BaseException as exc:
        _put_back(kept, exc)
        raise
    finally:
        kept.discard()


def _put_back(kept: CommittedFiles, exc: BaseException) -> None:
    """A command that failed leaves the committed files as they were; one stopped resumably keeps the
    run record that `--resume` continues."""
    resumable = isinstance(exc, (RunInterruptedError, StorageError, RankLostError, KeyboardInterrupt))
    try:
        changed = kept.restore(state=not resumable)
    except OSError as error:  # the disk refuses even this: say so, and let the first error be seen
        logging.getLogger("wf").error("the committed files could not all be put back: %s", error)
        return
    if changed:
        logging.getLogger("wf").info("put back as they were: %s", ", ".join(changed))


def _start_or_resume(project: Project, state: ProjectState, definition: PhaseDefinition, cfg: Any,
                     override_reason: str | None, on_progress: Callable[[Any], None] | None,
                     say: Callable[[str], None], resume: bool, world: Any, announce: Any,
                     deadline: float | None) -> PhaseResult:
    phase = definition.name
    if resume:
        if phase not in RESUMABLE_PHASES:
            raise UserInputError(f"`wf phase {phase} --resume` is not supported; resumable: "
                                 f"{', '.join(RESUMABLE_PHASES)}.")
        return _resume_phase(project, state, phase, cfg, on_progress, say, world, announce, deadline)

    # -- entry gate -----------------------------------------------------------------------------
    verdict = entry_verdict(project, state, phase)
    origin = verdict.origin
    if not verdict.allowed:
        if override_reason is None:
            raise GateClosedError(f"cannot start {phase}: {verdict.reason}.",
                                  hint=f"Run `{verdict.unblock}` to see what is left, or override explicitly "
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
    atomic_write_json(run_dir / STARTED_CONFIG, cfg.model_dump(mode="json"))  # what --resume must continue
    # the project moves to this phase when the run records its outcome, not before: a run that
    # fails, or stops, leaves the project where it stood
    run = RunRecord(run_id=run_id, phase=phase, status="running", started_at=now_iso(),
                    dir=project.relative(run_dir), entered_from=origin)
    state.runs.append(run)
    state.record("phase_started", phase=phase, run_id=run_id)
    save_state(project, state)

    say(f"run {run_id} started")
    return _execute(project, state, definition, run, cfg, RunContext(
        project, cfg, config_sha256(project.config_path), run_id, run_dir, on_progress or (lambda _p: None), say,
        world=world, announce=announce or (lambda _plan: None), deadline=deadline), verified)


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
                  on_progress: Callable[[Any], None] | None, say: Callable[[str], None], world: Any = None,
                  announce: Any = None, deadline: float | None = None) -> PhaseResult:
    """Continue the interrupted run where it stopped: same run id, directory and record."""

    run, path = _resumable_run(project, state, phase)
    _refuse_a_changed_config(project, run, cfg)
    remove_stale_temp_files(project.inside(run.dir), recursive=True)  # a kill -9 mid-write leaves these
    run.status, run.finished_at, run.passed = "running", None, None
    run_dir = project.inside(run.dir)
    where = project.relative(path if path is not None else run_dir)
    state.record("phase_resumed", phase=phase, run_id=run.run_id, checkpoint=where)
    save_state(project, state)
    say(f"run {run.run_id} resumed from {where}")
    verified = _fingerprints(project, state, phase, cfg, say)
    ctx = RunContext(project, cfg, config_sha256(project.config_path), run.run_id, run_dir,
                     on_progress or (lambda _p: None), say, resume_from=path, resuming=True, world=world,
                     announce=announce or (lambda _plan: None), deadline=deadline)
    return _execute(project, state, load_phase(phase, project.root), run, cfg, ctx, verified)


def _execute(project: Project, state: ProjectState, definition: PhaseDefinition, run: RunRecord, cfg: Any,
             ctx: Any, verified: dict[str, Any]) -> PhaseResult:
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
    ctx.tracking = open_phase_tracking(project, cfg, run, verified, ctx.resuming, say_and_log)
    if ctx.tracking is not None:
        save_state(project, state)  # the MLflow run's id, for --resume
    try:
        output = run_runner(phase, ctx)
    except BaseException as exc:
        error = _failure(project, state, phase, run, ctx, exc, logger, handler)
        if error is exc:
            raise
        raise error from (exc if isinstance(error, PhaseFailedError) else None)
    finally:
        logger.removeHandler(handler)
        handler.close()

    # stopped on a signal (or a trial or seed run inside the phase did): nothing to report yet, and
    # the run the gate judges stays the last one that ran to its end
    if output.partial or output.status == "interrupted":
        end_phase_tracking(ctx.tracking, "KILLED")
        run.status, run.finished_at, run.passed = "interrupted", now_iso(), False
        stop = output.stopped or StopPoint(None, None)
        run.summary["resume"] = stop.resume
        state.record("phase_finished", phase=phase, run_id=run_id, status=run.status)
        save_state(project, state)
        raise _stopped_by_signal(project, state, phase, run_id, stop)

    # -- evidence, report, criteria ---------------------------------------------------------------
    for event, data in output.events:
        state.record(event, **data)
    state.current_phase = phase  # the run has an outcome: the project stands here now
    state.entered_from[phase] = (run.entered_from if "entered_from" in run.model_fields_set
                                 else state.entered_from.get(phase))
    output.facts.fingerprints = Fingerprints(**verified, approves=_approved_configs(project, phase, output.facts))
    try:
        result = _record_outcome(project, state, definition, run, output.facts, cfg.project.name, output.status)
        result.notes = output.notes
        save_state(project, state)
        gate = _sync_auto_marks(project, state, phase)
    except BaseException:
        end_phase_tracking(ctx.tracking, "FAILED")
        raise
    end_phase_tracking(ctx.tracking, "FINISHED", project, run, gate)
    return result


def _failure(project: Project, state: ProjectState, phase: str, run: RunRecord, ctx: Any, exc: BaseException,
             logger: logging.Logger, handler: logging.Handler) -> BaseException:
    """The run's record after `exc`, and the error the command exits with. A refused write (disk
    full, read-only), a lost rank or Ctrl-C stops a run the way a signal does: the last resume
    checkpoint is intact, and the run continues once the cause is gone; so does a resume refused as
    bad input (another config, another process count). Anything else failed, or crashed."""
    stopped = isinstance(exc, (KeyboardInterrupt, StorageError, RankLostError))
    refused_resume = ctx.resuming and isinstance(exc, UserInputError)
    run.status = ("interrupted" if stopped or refused_resume else
                  "failed_input" if isinstance(exc, WfError) else "crashed")
    run.finished_at, run.passed = now_iso(), False
    run.summary = {"error": f"{type(exc).__name__}: {exc}"}
    end_phase_tracking(ctx.tracking, "KILLED" if run.status == "interrupted" else "FAILED")
    state.record("phase_finished", phase=phase, run_id=run.run_id, status=run.status)
    try:
        save_state(project, state)
    except StorageError:  # it keeps saying "running"; `--resume` takes a running run whose process is gone
        logger.error("%s: not updated (the disk refuses writes)", project.relative(project.state_path))
    for kind, stop in _STOPS:  # the stops, as a table: each says how to continue
        if isinstance(exc, kind):
            return stop(project, phase, run, exc)
    if isinstance(exc, UserInputError) and not ctx.resuming:
        logger.removeHandler(handler)
        handler.close()
        shutil.rmtree(ctx.run_dir, ignore_errors=True)  # bad input: nothing ran, the message says what to fix
    if isinstance(exc, WfError):
        return exc
    logger.exception("phase %s crashed", phase)
    return PhaseFailedError(f"{phase} crashed: {type(exc).__name__}: {exc}",
                            hint=f"The traceback is in {project.relative(ctx.run_dir)}/logs/training.log.")


def _storage_stop(project: Project, phase: str, run: RunRecord, exc: Any) -> BaseException:
    again = (f"continue run {run.run_id} with {_resume_command(phase)}" if phase in RESUMABLE_PHASES
             else f"run `wf phase {phase}` again")
    return StorageError(f"{phase} stopped: {exc.message}", hint=f"Free space (or fix the permissions), then {again}.")


def _rank_stop(project: Project, phase: str, run: RunRecord, exc: Any) -> BaseException:
    again = _resume_command(phase) if phase in RESUMABLE_PHASES else f"`wf phase {phase}`"
    return RankLostError(f"{phase} stopped: {exc.message}", hint=f"Run {run.run_id} is recorded as interrupted; see "
                         f"the other rank's message, then continue with {again}.")


def _interrupt_stop(project: Project, phase: str, run: RunRecord, exc: Any) -> BaseException:
    """Ctrl-C outside a training run's own handler (an LR range test, a scan)."""
    saved = (project.inside(run.dir) / "checkpoints" / "resume.pt").is_file()
    again = (_resume_command(phase) if phase in RESUMABLE_PHASES and (phase != "baseline" or saved)
             else f"`wf phase {phase}`")
    return RunInterruptedError(f"{phase} interrupted; run {run.run_id} is recorded as interrupted.",
                               hint=f"Continue with {again}.")


_STOPS = ((StorageError, _storage_stop), (RankLostError, _rank_stop), (KeyboardInterrupt, _interrupt_stop))


def _approved_configs(project: Project, phase: str, facts: PhaseFacts) -> list[dict[str, Any]]:
    """Configs a gate approves besides the one its phase ran: optimization's optimized config, the
    fix that diagnostics verified by trial runs. Training one of them next does not re-open the
    gates before (the drift check in gates.py)."""
    path = None
    if isinstance(facts, OptimizationFacts) and facts.optimized_config:
        path = facts.optimized_config.path
    elif isinstance(facts, DiagnosticsFacts) and facts.verified_fix:
        path = facts.suggested_config
    if not path or not (project.root / path).is_file():
        return []
    try:
        return [fingerprints.config_fingerprint(load_config(project.root / path), phase)]
    except UserInputError:
        return []


def _resume_command(phase: str) -> str:
    """How to continue an interrupted run of `phase`: under DDP, with as many processes (a resume
    restores each rank's RNG and data position, so it refuses another count)."""

    world = world_from_env()
    command = f"`wf phase {phase} --resume`"
    return command if world is None else f"{command} with the same {world.world_size} processes"


def _stopped_by_signal(project: Project, state: ProjectState, phase: str, run_id: str,
                       stop: StopPoint) -> RunInterruptedError:
    """The error a signal-stopped run exits with (130 SIGINT, 143 SIGTERM, 138 SIGUSR1; 124 for
    --time-limit). SIGUSR1 is SLURM's warning before preemption: with everything saved, the job is
    requeued, and its script runs again with `--resume`."""
    import signal

    from mlflow_core.training.trainer import TIME_LIMIT  # torch is loaded: a run just trained

    signum = stop.signum
    resume = stop.resume or {}
    within = f" of {resume['run_dir']}" if resume.get("run_dir") else ""
    cause = "at its time limit" if signum == TIME_LIMIT else "on a signal"
    saved = (f"{phase} stopped {cause}; run {run_id} is recorded as interrupted and saved at step "
             f"{resume.get('step')}{within}.")
    resume = f"Continue it exactly where it stopped with {_resume_command(phase)}."
    if signum == TIME_LIMIT:
        return RunTimeLimitError(saved, hint=resume)
    if signum != signal.SIGUSR1:
        error = {signal.SIGTERM: RunTerminatedError, signal.SIGHUP: RunHangupError}.get(signum, RunInterruptedError)
        return error(saved, hint=resume)
    job = slurm_job_id()
    if job is None:
        return RunPreemptedError(saved + " SIGUSR1 outside a SLURM job: nothing to requeue.", hint=resume)
    # requeueing makes SLURM stop this job at once; whatever it sends now finds everything saved
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outcome = requeue_job(job)
    state.record("job_requeued", phase=phase, run_id=run_id, **outcome)
    save_state(project, state)
    if outcome["requeued"]:
        return RunPreemptedError(saved + f" SLURM job {job} is requeued; it continues with --resume.",
                                 hint="Nothing to do: the requeued job resumes the run.")
    return RunPreemptedError(saved + f" Requeueing SLURM job {job} failed: {outcome['detail']}.",
                             hint=f"Resubmit the job (`sbatch slurm/{phase}.sbatch`); it continues with --resume.")


def _record_outcome(project: Project, state: ProjectState, definition: PhaseDefinition, run: RunRecord,
                    facts: PhaseFacts, project_name: str, status: str,
                    event: str = "phase_finished") -> PhaseResult:

    phase = definition.name
    facts.report = None
    publish = PHASES[phase].publisher()
    if publish is not None:
        publish(project, run.run_id, project.inside(run.dir), facts, project_name)
    run.summary["evidence_sha256"] = write_evidence(project, phase, run.run_id, facts)
    criteria = evaluate_criteria(project, state, definition)
    report_name = f"reports/{definition.report}"
    shown = [dict(c, passed=True, detail=f"{report_name} (this report)") if c["check"] == "report_generated" else c
             for c in criteria]
    report, rec = render_phase_report(project, state, definition, run.run_id, facts, shown, project_name)
    facts.report = FileRef(**report)
    run.summary["evidence_sha256"] = write_evidence(project, phase, run.run_id, facts)
    criteria = evaluate_criteria(project, state, definition)
    passed = all(c["passed"] for c in criteria) and status in ("completed", "early_stopped")
    run.status = status if passed or status != "completed" else "failed_criteria"
    run.finished_at = run.finished_at or now_iso()
    run.passed = passed
    shown_facts = facts.to_json()
    run.summary.update({k: shown_facts[k] for k in ("best", "epochs_completed", "duration_s") if k in shown_facts})
    run.summary["report"] = report["path"]
    state.record(event, phase=phase, run_id=run.run_id, status=run.status, passed=passed)
    return PhaseResult(phase, run.run_id, run.status, passed, criteria, report["path"], rec)


def _sync_auto_marks(project: Project, state: ProjectState, phase: str) -> Any:
    """Tick (or untick) the auto items of the phase's checklist in the project's copy; the gate's
    verdict after, or None without a checklist."""
    definition = load_phase(phase, project.root)
    path = project.checklist_path(definition.exit_checklist)
    if not path.is_file():
        return None
    gate = evaluate_gate(project, state, phase)
    set_marks(path, {i.id: i.checked for i in gate.items if i.kind == "auto"})
    return gate


def rerender_report(project: Project, phase: str) -> PhaseResult:
    """`wf report PHASE`: render the phase's report again from its recorded evidence and run files."""
    with project_lock(project, f"wf report {phase}"), _unchanged_on_failure(project):
        state = load_state(project)
        definition = load_phase(phase, project.root)
        evidence = read_evidence(project, phase)
        if evidence is None:
            raise UserInputError(f"{phase} has recorded no run yet; run `wf phase {phase}` first.")
        if not evidence.intact:
            raise UserInputError(f".wf/evidence/{phase}.json {evidence.why_not_intact()}; "
                                 f"run `wf phase {phase}` again.")
        run = state.run(evidence.run_id or "")
        if run is None:
            raise UserInputError(f"run {evidence.run_id} of {phase} is not in .wf/state.json; "
                                 f"run `wf phase {phase}` again.")
        name = load_config(project.config_path).project.name
        result = _record_outcome(project, state, definition, run, evidence.facts, name,
                                 getattr(evidence.facts, "status", run.status), event="report_rendered")
        save_state(project, state)
        _sync_auto_marks(project, state, phase)
        return result


def decide(project: Project, choice: str, reason: str | None) -> tuple[Decision, bool]:
    """Record the decision in the current phase; (the decision, whether it was already on record:
    the same choice on the same run, with no other reason, is the decision made before, not a new one)."""
    if choice not in DECISIONS:
        raise UserInputError(f"unknown decision {choice!r}; choose one of: {', '.join(DECISIONS)}."
                             + did_you_mean(choice, DECISIONS))
    with project_lock(project, f"wf decide {choice}"):
        state = load_state(project)
        current = state.current_phase
        if current is None:
            raise UserInputError("nothing to decide yet: no phase has run.", hint="Run `wf phase setup`.")
        options = load_phase(current, project.root).next
        target = DECISIONS[choice]
        if len(options) < 2:
            raise UserInputError(f"no decision to make in {current}: it leads only to "
                                 f"{', '.join(options) or 'nothing'}.")
        if target not in options:
            verbs = [v for v, p in DECISIONS.items() if p in options]
            raise UserInputError(f"{current} cannot lead to {target}; choose one of: {', '.join(verbs)}.")
        judged = read_evidence(project, current)  # the run the gate judges, not a later interrupted one
        if judged is None or not judged.run_id:
            raise UserInputError(f"{current} has no finished run to decide on.", hint=f"Run `wf phase {current}`.")
        before = state.decision
        if (before is not None and (before.phase, before.choice, before.after_run) == (current, choice, judged.run_id)
                and reason in (None, before.reason)):
            return before, True
        decision = Decision(phase=current, choice=choice, next_phase=target, reason=reason, time=now_iso(),
                            after_run=judged.run_id)
        state.decision = decision
        state.record("decision", **decision.model_dump(exclude={"time"}))
        save_state(project, state)
        _sync_auto_marks(project, state, current)
        return decision, False


UNFINISHED_STATUSES = ("running", "interrupted", "crashed", "failed_input")


def select_run(project: Project, ref: str) -> RunRecord:
    """`wf runs select RUN`: make an earlier run that ran to its end the one its phase's gate judges
    (its evidence and report come back from the copy kept per run); recorded in the history."""

    with project_lock(project, f"wf runs select {ref}"):
        state = load_state(project)
        run = find_run(project, ref, state)
        if run.status in UNFINISHED_STATUSES:
            raise UserInputError(f"run {run.run_id} is {run.status}: only a run that ran to its end can be the one "
                                 f"the {run.phase} gate judges.", hint=f"`wf runs --phase {run.phase}` lists them.")
        archived = read_evidence(project, run.phase, archived_evidence_path(project, run.run_id))
        if archived is None:
            raise UserInputError(f"run {run.run_id} has no evidence of its own in "
                                 f"{project.relative(archived_evidence_path(project, run.run_id))} (wf keeps a copy "
                                 "per run since this version).", hint=f"Run `wf phase {run.phase}` again.")
        if not archived.intact:
            raise UserInputError(f"{project.relative(archived_evidence_path(project, run.run_id))} "
                                 f"{archived.why_not_intact()}; it cannot be selected.",
                                 hint=f"Run `wf phase {run.phase}` again.")
        state.record("run_selected", phase=run.phase, run_id=run.run_id, by=who())
        name = load_config(project.config_path).project.name
        _record_outcome(project, state, load_phase(run.phase, project.root), run, archived.facts, name,
                        getattr(archived.facts, "status", run.status), event="report_rendered")
        save_state(project, state)
        _sync_auto_marks(project, state, run.phase)
        return run


def waive(project: Project, checklist_name: str, item_id: str, reason: str, waived: bool = True) -> str:
    """`wf checklist waive NAME ID --reason`: drop an item of a gate on purpose, on the record
    (who, when, why), shown by every gate check, status and later report. Returns the phase."""
    if waived and not reason.strip():
        raise UserInputError("--reason is required: a waiver says why the item does not apply.")
    command = f"wf checklist {'waive' if waived else 'unwaive'} {checklist_name} {item_id}"
    with changing_state(project, command) as state:
        phase = phase_gated_by(checklist_name, project.root)
        if phase is None:
            raise UserInputError(f"{checklist_name!r} gates no phase; checklists that do: "
                                 f"{', '.join(load_phase(p, project.root).exit_checklist for p in PHASE_ORDER)}.")
        checklist = load_checklist(project, checklist_name)
        known = {i.id for i in checklist.items} | {r.id for r in required_items(phase, project.root)}
        if item_id not in known:
            raise UserInputError(f"{project.relative(checklist.path)}: no item {item_id!r} in the {phase} gate; "
                                 f"items: {', '.join(sorted(known))}.")
        active = state.waivers(checklist_name)
        if not waived and item_id not in active:
            raise UserInputError(f"{checklist_name} {item_id} is not waived.", hint=f"`wf gate check {phase}` shows "
                                 "the waivers on record.")
        if waived:
            state.record("checklist_waive", checklist=checklist_name, item=item_id, reason=reason.strip(), by=who())
        else:
            state.record("checklist_unwaive", checklist=checklist_name, item=item_id, by=who())
    return phase


def tick(project: Project, checklist_name: str, item_id: str, checked: bool = True, note: str | None = None,
         by: dict[str, Any] | None = None) -> None:
    """Tick (or untick) a manual item, recording who did: a person through `wf checklist tick`, or
    `by`, a command acting for the user (quickstart), which every gate check then names."""
    with changing_state(project, f"wf checklist tick {checklist_name} {item_id}") as state:
        checklist = load_checklist(project, checklist_name)
        item = checklist.item(item_id)
        if item.auto:
            phase = phase_gated_by(checklist_name, project.root)
            raise ChecklistError(f"{checklist.path}: line {item.line}: {item_id!r} is verified by wf from recorded "
                                 "evidence and cannot be ticked by hand.",
                                 hint=(f"`wf phase {phase}` records it; `wf gate check {phase}` shows what it found."
                                       if phase else "A phase records it; `wf gate check` shows what it found."))
        if not project.checklist_path(checklist_name).is_file():
            raise ChecklistError(f"{project.checklist_path(checklist_name)}: not in the project.",
                                 hint="`wf init` copies the checklists into the project.")
        set_marks(checklist.path, {item_id: checked})
        state.record("checklist_tick" if checked else "checklist_untick", checklist=checklist_name,
                     item=item_id, by=by or {"kind": "person", "name": who(), "via": "wf checklist tick"},
                     **({"note": note} if note else {}))
