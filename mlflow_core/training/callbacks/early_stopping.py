"""Early stopping on the validation metric (`early_stopping`), and the caller's own verdict after
each validated epoch (an Optuna pruner): both end the run after the epoch's checkpoints. The best
value so far is recorded as the run's `best`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow_core.monitoring.anomalies import EarlyStopping as Patience
from mlflow_core.training.callbacks.base import Callback


class EarlyStopping(Callback):
    state_key = "early_stopping"

    def __init__(self, cfg: Any, on_epoch: Callable[[int, float], bool] | None):
        self.metric = cfg.validation.metric
        self.patience = Patience(cfg.validation.mode, cfg.early_stopping.patience, cfg.early_stopping.min_delta,
                                 cfg.early_stopping.enabled, self.metric)
        self.on_epoch = on_epoch  # (epoch, validation metric) -> stop now? e.g. an Optuna pruner

    def on_validation_end(self, t, s, record) -> None:
        value = s.validated_value
        if value is None:
            return
        improved, should_stop, reason = self.patience.update(s.epoch, value)
        record["improved"] = improved
        if improved:
            s.metrics["best"] = {"metric": self.metric, "value": value, "epoch": s.epoch}
        if should_stop:
            s.stop("early_stopped", reason)
        elif self._caller_stops(t, s.epoch, value):
            s.stop("pruned", f"stopped after epoch {s.epoch} by the caller (pruned)")

    def _caller_stops(self, t: Any, epoch: int, value: float) -> bool:
        """Under DDP every rank asks, and all stop if rank 0's caller says so."""
        says = bool(self.on_epoch is not None and self.on_epoch(epoch, value))
        return t.strategy.any(says, t.device)

    def state_dict(self) -> dict[str, Any]:
        return self.patience.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.patience.load_state_dict(state)

