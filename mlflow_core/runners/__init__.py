"""Phase runners: the torch side of each phase, one module per phase, found through the phase
registry (workflow/phases.py) only when the phase runs, so that commands which do not train never
import torch. This package itself stays torch-free: the engine imports it at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_core.errors import DataError, UserInputError
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import PhaseFacts
from mlflow_core.workflow.phases import PHASES
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import RunMetrics, load_run_metrics

if TYPE_CHECKING:
    from mlflow_core.config.schema import WorkflowConfig


@dataclass
class RunContext:
    project: Project
    cfg: WorkflowConfig
    config_sha256: str
    run_id: str
    run_dir: Path
    on_progress: Callable[[Any], None] = lambda _p: None
    on_message: Callable[[str], None] = lambda _m: None
    resume_from: Path | None = None  # checkpoints/resume.pt of the interrupted run being continued
    resuming: bool = False  # `--resume`: runs already in run_dir are continued or reused, not redone
    smoke: bool = False  # `--smoke`: two training and two validation steps per run, nothing recorded
    world: Any = None  # distributed.World under DDP (this is rank 0)
    announce: Callable[[dict[str, Any] | None], None] = lambda _plan: None  # tells the other ranks what to train
    deadline: float | None = None  # time.monotonic() past which training stops, resumably (--time-limit)
    tracking: Any = None  # monitoring/mlflow_runs.PhaseRun: the phase's MLflow run (monitoring.mlflow)

    def announce_run(self, phase: str, cfg: WorkflowConfig, run_dir: Path, run_id: str,
                     resume_from: Path | None = None, data_spec: dict[str, Any] | None = None) -> None:
        """Under DDP, just before each training run: the other ranks start the same trainer with
        this (`data_spec`: a fold of cross-validation, which they build from the config too)."""
        if self.world is not None:
            self.announce({"phase": phase, "run_id": run_id, "run_dir": str(run_dir),
                           "resume_from": str(resume_from) if resume_from else None,
                           "config": cfg.model_dump(mode="json"), "limits": self.trainer_limits(),
                           "data_spec": data_spec})

    def make_trainer(self, phase: str, cfg: WorkflowConfig, run_dir: Path, run_id: str, *,
                     resume_from: Path | None = None, data_spec: dict[str, Any] | None = None, **options: Any) -> Any:
        """The shared trainer for one training run of this phase, the other ranks told to start the same
        one under DDP (see recorded_trainer)."""
        # torch: the engine imports this package, and `wf status` the engine
        from mlflow_core.training.trainer import recorded_trainer

        self.announce_run(phase, cfg, run_dir, run_id, resume_from, data_spec)
        link = self.tracking.link() if self.tracking is not None and not self.smoke else None
        return recorded_trainer(cfg, self.project.root, run_dir, run_id=run_id, phase=phase, world=self.world,
                                resume_from=resume_from, deadline=self.deadline, limits=self.trainer_limits(),
                                mlflow=link, **options)

    def trainer_limits(self) -> dict[str, Any]:
        """What every trainer of this phase runs with: `--smoke` caps each epoch at two steps."""
        return ({"limit_train_steps": SMOKE_STEPS, "limit_val_batches": SMOKE_STEPS, "short_check": True}
                if self.smoke else {})


SMOKE_STEPS = 2


@dataclass(frozen=True)
class StopPoint:
    """Why and where a phase's training stopped before its end: the signal (or TIME_LIMIT) and the
    resume checkpoint (CheckpointRef's JSON form, with the run directory it is in)."""
    signum: int | None
    resume: dict[str, Any] | None


@dataclass
class RunOutput:
    status: str  # completed, early_stopped, failed_nan, failed_checks, interrupted
    facts: PhaseFacts | None  # the phase's facts model (phases.py); None when interrupted
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # recorded in the history
    partial: bool = False  # stopped before the phase had a result: no evidence and no report
    stopped: StopPoint | None = None  # stopped on a signal or at its time limit


class SubRunInterrupted(Exception):
    """One of a phase's training runs (a trial, a seed) stopped on a signal with a resume checkpoint;
    the phase stops too, and `wf phase NAME --resume` continues it."""

    def __init__(self, signum: int | None, resume: dict[str, Any] | None, run_dir: Path):
        super().__init__(f"stopped in {run_dir}")
        self.signum, self.resume, self.run_dir = signum, resume, run_dir

    def output(self, ctx: RunContext) -> RunOutput:
        resume = dict(self.resume or {}, run_dir=ctx.project.relative(self.run_dir))
        return RunOutput("interrupted", None, partial=True, stopped=StopPoint(self.signum, resume))


FINISHED_RUN_STATUSES = ("completed", "early_stopped", "pruned", "failed_nan")


def fit_or_continue(ctx: RunContext, cfg: WorkflowConfig, run_dir: Path, run_id: str,
                    data_spec: dict[str, Any] | None = None, **trainer_options: Any) -> Any:
    """Train `cfg` in `run_dir` with the shared trainer, stopping on signals with a resume checkpoint.
    When the phase is resumed, a run that already finished there is loaded instead of trained again
    and one that was interrupted continues from its resume.pt, so the phase ends as it would have."""
    resume_from = None
    metrics_path = run_dir / "logs" / "metrics.json"
    if ctx.resuming and metrics_path.is_file():
        try:
            recorded = load_run_metrics(metrics_path)
        except UserInputError:  # torn or edited: train the run again rather than trust it
            recorded = None
        if (recorded is not None and recorded.status in FINISHED_RUN_STATUSES
                and recorded.config == cfg.model_dump(mode="json")):
            finished = _load_finished(cfg, ctx, run_dir, recorded, trainer_options.get("data"))
            if finished is not None:
                return finished
        if (run_dir / "checkpoints" / "resume.pt").is_file():
            resume_from = run_dir / "checkpoints" / "resume.pt"
    phase = trainer_options.pop("phase", "")
    trainer_options.setdefault("on_progress", ctx.on_progress)  # every trial, comparison and final run shows it
    trainer = ctx.make_trainer(phase, cfg, run_dir, run_id, resume_from=resume_from, data_spec=data_spec,
                               **trainer_options)
    result = trainer.fit()
    if result.status == "interrupted":
        raise SubRunInterrupted(trainer.signal_received, result.metrics.get("resume"), run_dir)
    return result


def _load_finished(cfg: WorkflowConfig, ctx: RunContext, run_dir: Path, recorded: RunMetrics, data: Any) -> Any:
    """A finished run's result rebuilt from its files: metrics.json and its last checkpoint."""
    # torch: the engine imports this package, and `wf status` the engine
    from mlflow_core.training.checkpoint import load_checkpoint
    from mlflow_core.training.data.sources import build_data
    from mlflow_core.training.models import build_model
    from mlflow_core.training.optim import resolve_device
    from mlflow_core.training.trainer import TrainResult

    last = recorded.checkpoints.last
    if not last or not (run_dir / last.path).is_file():
        return None  # nothing to load the weights from: train it again (same config, same result)
    data = data or build_data(cfg, ctx.project.root)
    model = build_model(cfg.model, data.num_classes, data.input_shape, ctx.project.root)
    model.load_state_dict(load_checkpoint(run_dir / last.path)["model"])
    model.to(resolve_device(cfg.training.device))
    ctx.on_message(f"{ctx.project.relative(run_dir)}: finished before the interruption; reused")
    metrics = recorded.to_json()
    return TrainResult(recorded.status, metrics, model, run_dir, metrics.get("anomalies") or [])


def run_runner(phase: str, ctx: RunContext) -> RunOutput:
    """Run `phase`'s runner, first saying what precision its training will use when that is not
    simply the configured one (a CPU that only emulates fp16/bf16; see training/precision.py)."""
    # torch: the engine imports this package, and `wf status` the engine
    from mlflow_core.training.optim import resolve_device
    from mlflow_core.training.precision import plan_precision

    cfg = ctx.cfg
    plan = plan_precision(cfg.training.precision, resolve_device(cfg.training.device).type,
                          short_check=ctx.smoke or phase == "setup")  # setup trains only its short checks
    if plan.note:
        ctx.on_message(plan.note)
    if cfg.data.source == "custom" and phase != "setup" and not ctx.smoke:
        _verify_custom_data(ctx)
    return PHASES[phase].run()(ctx)


def _verify_custom_data(ctx: RunContext) -> None:
    """A custom dataset has no files to fingerprint: its items are compared with the sample setup
    hashed (`wf gate check` cannot: it runs without torch). Another content is refused before any
    training, naming the split."""
    # torch: the engine imports this package, and `wf status` the engine
    from mlflow_core.training.data.sources import build_data
    from mlflow_core.training.data_checks import dataset_digests

    setup = read_evidence(ctx.project, "setup")
    recorded = (setup.facts.data.digests or {}) if setup and setup.intact else {}
    if not recorded:
        return
    now = dataset_digests(build_data(ctx.cfg, ctx.project.root))
    changed = [f"{split} (length {recorded[split]['length']} → {now.get(split, {}).get('length', 0)}, "
               f"sample hash {recorded[split]['sha256'][:12]} → {str(now.get(split, {}).get('sha256'))[:12]})"
               for split in recorded if now.get(split) != recorded[split]]
    if changed:
        raise DataError(f"data.target {ctx.cfg.data.target!r} returns other samples than setup verified: "
                        + "; ".join(changed),
                        hint="Run `wf phase setup` again to verify the data as it is now.")
