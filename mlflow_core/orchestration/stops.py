"""How a phase's run ends when it does not end well: its record after the error, and the error
the command exits with, each saying how to continue (a table: `_STOPS`).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from mlflow_core.errors import (
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
)
from mlflow_core.orchestration.slurm import requeue_job, slurm_job_id
from mlflow_core.orchestration.tracking import end_phase_tracking
from mlflow_core.runners import StopPoint
from mlflow_core.workflow.phases import RESUMABLE_PHASES, continue_command, resume_command
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import (
    ProjectState,
    RunRecord,
    now_iso,
    save_state,
)


class SignalStop(BaseException):
    """SIGTERM, SIGHUP or SIGUSR1 while a phase's run is recorded but not training (loading the data,
    building the model, opening the tracking): the run stops there, recorded as interrupted. During
    training the trainer's own handler finishes the step and saves a resume point instead."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class PhaseSignals:
    """The stop signals during a phase command: they wait (are deferred) until its run is recorded,
    stop it from then (`arm()`: SignalStop, one that came before at once), and wait again while its
    outcome is written (`deferring()`), so that a signal at any moment ends the command with its exit
    code and the run with a record. A training run's own handler takes over while it trains."""

    SIGNALS = ("SIGTERM", "SIGHUP", "SIGUSR1")

    def __init__(self) -> None:
        self.deferred: int | None = None
        self._defer = True
        self._previous: dict[int, Any] = {}

    def arm(self) -> None:
        self._defer = False
        if self.deferred is not None:
            signum, self.deferred = self.deferred, None
            raise SignalStop(signum)

    def __enter__(self) -> PhaseSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {getattr(signal, name): signal.signal(getattr(signal, name), self._on_signal)
                              for name in self.SIGNALS}
        return self

    def __exit__(self, *_exc: Any) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._defer:
            self.deferred = self.deferred or signum
            return
        raise SignalStop(signum)

    def deferring(self) -> None:
        self._defer = True

    def raise_deferred(self, phase: str, run: RunRecord | None) -> None:
        """A signal that arrived while the outcome was written: the command exits with its code."""
        if self.deferred is not None:
            what = f"as run {run.run_id} ended; its outcome ({run.status}) is recorded" if run else "before a run began"
            raise _signal_error(self.deferred)(f"{phase}: a signal arrived {what}.",
                                               hint="`wf status` shows where the project stands.")


def _signal_error(signum: int) -> type[RunInterruptedError]:
    import signal

    return {signal.SIGHUP: RunHangupError, signal.SIGUSR1: RunPreemptedError}.get(signum, RunTerminatedError)


def failure(project: Project, state: ProjectState, phase: str, run: RunRecord, ctx: Any, exc: BaseException,
            logger: logging.Logger, handler: logging.Handler) -> BaseException:
    """The run's record after `exc`, and the error the command exits with. A refused write (disk
    full, read-only), a lost rank or Ctrl-C stops a run the way a signal does: the last resume
    checkpoint is intact, and the run continues once the cause is gone; so does a resume refused as
    bad input (another config, another process count). Anything else failed, or crashed."""
    stopped = isinstance(exc, (KeyboardInterrupt, StorageError, RankLostError, SignalStop))
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
            return stop(project, state, phase, run, exc)
    if isinstance(exc, UserInputError) and not ctx.resuming:
        logger.removeHandler(handler)
        handler.close()
        shutil.rmtree(ctx.run_dir, ignore_errors=True)  # bad input: nothing ran, the message says what to fix
    if isinstance(exc, WfError):
        return exc
    logger.exception("phase %s crashed", phase)
    return PhaseFailedError(f"{phase} crashed: {type(exc).__name__}: {exc}",
                            hint=f"The traceback is in {project.relative(ctx.run_dir)}/logs/training.log.")


def _storage_stop(project: Project, state: ProjectState, phase: str, run: RunRecord, exc: Any) -> BaseException:
    again = (f"continue run {run.run_id} with {resume_command(phase)}" if phase in RESUMABLE_PHASES
             else f"run `wf phase {phase}` again")
    return StorageError(f"{phase} stopped: {exc.message}", hint=f"Free space (or fix the permissions), then {again}.")


def _rank_stop(project: Project, state: ProjectState, phase: str, run: RunRecord, exc: Any) -> BaseException:
    again = continue_command(phase)
    return RankLostError(f"{phase} stopped: {exc.message}", hint=f"Run {run.run_id} is recorded as interrupted; see "
                         f"the other rank's message, then continue with {again}.")


def _interrupt_stop(project: Project, state: ProjectState, phase: str, run: RunRecord, exc: Any) -> BaseException:
    """Ctrl-C outside a training run's own handler (an LR range test, a scan)."""
    return RunInterruptedError(f"{phase} interrupted; run {run.run_id} is recorded as interrupted.",
                               hint=f"Continue with {continue_command(phase)}.")


def _signal_stop(project: Project, state: ProjectState, phase: str, run: RunRecord, exc: Any) -> BaseException:
    import signal

    name = signal.Signals(exc.signum).name
    saved = (f"{phase} stopped by {name} before its training began or after it ended; run {run.run_id} is "
             "recorded as interrupted.")
    if exc.signum == signal.SIGUSR1:
        return _preempted(project, state, phase, run.run_id, saved, f"Continue with {continue_command(phase)}.")
    return _signal_error(exc.signum)(saved, hint=f"Continue with {continue_command(phase)}.")


_STOPS = ((StorageError, _storage_stop), (RankLostError, _rank_stop), (KeyboardInterrupt, _interrupt_stop),
          (SignalStop, _signal_stop))


def stopped_by_signal(project: Project, state: ProjectState, phase: str, run_id: str,
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
    resume = f"Continue it exactly where it stopped with {resume_command(phase)}."
    if signum == TIME_LIMIT:
        return RunTimeLimitError(saved, hint=resume)
    if signum != signal.SIGUSR1:
        error = {signal.SIGTERM: RunTerminatedError, signal.SIGHUP: RunHangupError}.get(signum, RunInterruptedError)
        return error(saved, hint=resume)
    return _preempted(project, state, phase, run_id, saved, resume)


def _preempted(project: Project, state: ProjectState, phase: str, run_id: str, saved: str,
               resume: str) -> RunPreemptedError:
    """SLURM's warning before preemption, with everything saved: the job is requeued, and its script
    runs again (with `--resume` where the phase holds training state)."""
    import signal

    job = slurm_job_id()
    if job is None:
        return RunPreemptedError(saved + " SIGUSR1 outside a SLURM job: nothing to requeue.", hint=resume)
    # requeueing makes SLURM stop this job at once; whatever it sends now finds everything saved
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outcome = requeue_job(job)
    state.record("job_requeued", phase=phase, run_id=run_id, **outcome)
    save_state(project, state)
    again = "with --resume" if phase in RESUMABLE_PHASES else "by running the phase again"
    if outcome["requeued"]:
        return RunPreemptedError(saved + f" SLURM job {job} is requeued; it continues {again}.",
                                 hint="Nothing to do: the requeued job goes on.")
    return RunPreemptedError(saved + f" Requeueing SLURM job {job} failed: {outcome['detail']}.",
                             hint=f"Resubmit the job (`sbatch slurm/{phase}.sbatch`); it continues {again}.")
