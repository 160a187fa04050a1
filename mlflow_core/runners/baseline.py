"""Phase 2, the baseline: run the shared trainer on the config and summarise the run as evidence."""

from __future__ import annotations

from typing import Any

from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.runners import Interruption, RunContext, RunOutput
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.facts import TrainingFacts


def run_baseline(ctx: RunContext) -> RunOutput:
    mon = ctx.cfg.monitoring
    sampler = GpuSampler(mon.gpu_sample_interval_s, mon.gpu_utilization_target)
    trainer = ctx.make_trainer("baseline", ctx.cfg, ctx.run_dir, ctx.run_id, resume_from=ctx.resume_from,
                               on_progress=ctx.on_progress, gpu_sampler=sampler)
    result = trainer.fit()
    if result.status == "interrupted":
        return RunOutput(result.status, None, result.metrics,
                         interruption=Interruption(trainer.signal_received, result.metrics.get("resume")))
    return RunOutput(result.status, training_facts(ctx, result.metrics), result.metrics)


def training_facts(ctx: RunContext, m: dict[str, Any]) -> TrainingFacts:
    """The small, committable summary of a training run that gates are verified from."""

    rel = ctx.project.relative(ctx.run_dir)
    epochs = m["epochs"]
    losses = [e["train_loss"] for e in epochs if isinstance(e.get("train_loss"), float)]
    checkpoints = {}
    for name in ("best", "last"):
        c = m["checkpoints"].get(name)
        if c:
            checkpoints[name] = {**c, "path": f"{rel}/{c['path']}"}
    for kind in ("periodic", "top"):
        checkpoints[kind] = [{**c, "path": f"{rel}/{c['path']}"} for c in m["checkpoints"].get(kind, [])]
    durations = [e["duration_s"] for e in epochs]
    waits = [e["data_wait_fraction"] * e["duration_s"] for e in epochs if e.get("data_wait_fraction") is not None]
    return TrainingFacts.model_validate({
        "run_dir": rel, "device": m["device"], "status": m["status"], "stop_reason": m.get("stop_reason"),
        "epochs_completed": len(epochs), "steps": m["steps"], "duration_s": m["duration_s"],
        "first_epoch_train_loss": losses[0] if losses else None,
        "best_train_loss": min(losses) if losses else None,
        "best": m["best"], "target": m["target"], "nonfinite": m["nonfinite"],
        "anomalies": m["anomalies"], "checkpoints": checkpoints,
        "gpu": {k: v for k, v in m["gpu"].items() if k != "devices"},
        "data_wait_fraction": round(sum(waits) / sum(durations), 4) if durations and sum(durations) else None,
        "metrics": {"path": f"{rel}/logs/metrics.json", "sha256": file_sha256(ctx.run_dir / "logs" / "metrics.json")},
    })
