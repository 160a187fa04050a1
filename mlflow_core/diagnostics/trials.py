"""Fix trials: short real runs of the shared trainer with one config change, judged on the symptom."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.trainer import Trainer


def run_trial(cfg: WorkflowConfig, project_root: Path, data: DataBundle | None, changes: dict[str, Any],
              steps: int, min_drop: float = 0.0,
              judge: Callable[[nn.Module], tuple[bool, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Train `steps` steps with `changes`. The symptom is gone when every loss is finite and the last
    tenth of the losses averages below both the first tenth (by `min_drop`, relative) and the very
    first loss: finite but huge losses (weights blown up, then merely clipped) are not a fix.
    `judge`, when given, must also pass on the trained model (e.g. no layer of dead units).
    `data` None: the trial builds its own (for changes to the data section)."""
    # every trial runs its full `steps`: no early stopping, and epochs enough whatever the data size
    fixed = {"early_stopping.enabled": False, "training.epochs": max(cfg.training.epochs, steps)}
    trainer = Trainer(with_changes(cfg, {**fixed, **changes}), project_root, None, data=data)
    result = trainer.fit(max_steps=steps)
    losses = trainer.step_losses
    k = max(1, len(losses) // 10)
    first, last = (sum(losses[:k]) / k, sum(losses[-k:]) / k) if losses else (math.nan, math.nan)
    finite = result.record.nonfinite is None and all(math.isfinite(v) for v in losses)
    initial = losses[0] if losses else math.nan
    judged: dict[str, Any] = {}
    passed = True
    if judge is not None:
        passed, judged = judge(result.model)
    return {**judged, "steps": len(losses), "nonfinite_step": result.record.nonfinite.step if result.record.nonfinite else None,
            "initial_loss": initial if math.isfinite(initial) else str(initial),
            "first_loss": first if math.isfinite(first) else str(first),
            "last_loss": last if math.isfinite(last) else str(last),
            "symptom_gone": bool(finite and last < first * (1 - min_drop) and last < initial and passed)}
