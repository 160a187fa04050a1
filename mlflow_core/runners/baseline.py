"""Phase 2, the baseline: run the shared trainer on the config and summarise the run as evidence."""

from __future__ import annotations

from pathlib import Path

from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.runners import RunContext, RunOutput, StopPoint
from mlflow_core.runners.plans import about
from mlflow_core.training.callbacks.replay import REPLAY_DIR
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.facts import FileRef, GpuSummary, ReplayRecord, RunProof, TrainingFacts
from mlflow_core.workflow.records import CheckpointRef, Checkpoints, EpochWeights, RunMetrics


def run_baseline(ctx: RunContext) -> RunOutput:
    mon, epochs = ctx.cfg.monitoring, ctx.cfg.training.epochs
    if not ctx.smoke and not ctx.resuming:  # what it will spend, said before it spends it
        ctx.on_message(f"Plan: 1 run × {epochs} epoch{'s' * (epochs != 1)}"
                       + (", early stopping may end it sooner" if ctx.cfg.early_stopping.enabled else "")
                       + about(ctx.project, epochs, from_baseline=False) + ".")
    sampler = GpuSampler(mon.gpu_sample_interval_s, mon.gpu_utilization_target)
    trainer = ctx.make_trainer("baseline", ctx.cfg, ctx.run_dir, ctx.run_id, resume_from=ctx.resume_from,
                               on_progress=ctx.on_progress, gpu_sampler=sampler)
    result = trainer.fit()
    if result.status == "interrupted":
        return RunOutput(result.status, None, result.metrics,
                         stopped=StopPoint(trainer.signal_received, result.metrics.get("resume")))
    return RunOutput(result.status, training_facts(ctx, result.record), result.metrics)


def training_facts(ctx: RunContext, m: RunMetrics) -> TrainingFacts:
    """The small, committable summary of a training run that gates are verified from."""

    rel = ctx.project.relative(ctx.run_dir)
    losses = [e.train_loss for e in m.epochs if isinstance(e.train_loss, float)]

    def in_project(c: CheckpointRef) -> CheckpointRef:  # the run names its files inside its directory
        return c.model_copy(update={"path": f"{rel}/{c.path}"})

    saved = m.checkpoints
    checkpoints = Checkpoints(periodic=[in_project(c) for c in saved.periodic], top=[in_project(c) for c in saved.top],
                                  **{name: in_project(c) for name, c in (("best", saved.best), ("last", saved.last)) if c})
    duration = sum(e.duration_s for e in m.epochs)
    waited = sum(e.data_wait_fraction * e.duration_s for e in m.epochs if e.data_wait_fraction is not None)
    return TrainingFacts(
        run_dir=rel, device=m.device, status=m.status, stop_reason=m.stop_reason, epochs_completed=len(m.epochs),
        steps=m.steps, duration_s=m.duration_s, first_epoch_train_loss=losses[0] if losses else None,
        best_train_loss=min(losses) if losses else None, best=m.best, target=m.target, nonfinite=m.nonfinite,
        anomalies=m.anomalies, checkpoints=checkpoints,
        gpu=GpuSummary(**{k: v for k, v in (m.gpu or {}).items() if k != "devices"}) if m.gpu else None,
        data_wait_fraction=round(waited / duration, 4) if duration else None,
        metrics=FileRef(path=f"{rel}/logs/metrics.json", sha256=file_sha256(ctx.run_dir / "logs" / "metrics.json")),
        best_validation=_best_validation(m), chance=m.chance, weights=epoch_weights(m),
        replay=replay_record(ctx.run_dir, m, ctx.cfg.checkpointing.replay_every_n_epochs),
    )


def run_proof(ctx: RunContext, run_dir: Path, m: RunMetrics) -> RunProof:
    """What `wf verify` recomputes a training run in `run_dir` from (paths relative to the project)."""
    rel = ctx.project.relative(run_dir)
    best = m.checkpoints.best.model_copy(update={"path": f"{rel}/{m.checkpoints.best.path}"}) if m.checkpoints.best else None
    return RunProof(best=best, weights=epoch_weights(m),
                    replay=replay_record(run_dir, m, m.config["checkpointing"]["replay_every_n_epochs"]))


def epoch_weights(m: RunMetrics) -> dict[int, EpochWeights] | None:
    return {e.epoch: e.weights for e in m.epochs if e.weights is not None} or None


def _best_validation(m: RunMetrics) -> dict[str, float | str] | None:
    """The validation figures of the epoch the best checkpoint holds (the scalar `val_*` ones)."""
    if m.best is None:
        return None
    record = next((e for e in m.epochs if e.epoch == m.best.epoch), None)
    if record is None:
        return None
    figures = record.model_dump(mode="json")
    return {k: v for k, v in figures.items() if k.startswith("val_") and isinstance(v, (float, int, str))
            and not isinstance(v, bool)}


def replay_record(run_dir: Path, m: RunMetrics, every: int) -> ReplayRecord | None:
    """The epochs whose start state the run kept (checkpoints/replay/), None when it keeps none."""
    folder = run_dir / REPLAY_DIR
    epochs = sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.pt")) if folder.is_dir() else []
    return ReplayRecord(every_n_epochs=every, epochs=[e for e in epochs if e <= len(m.epochs)]) if every else None
