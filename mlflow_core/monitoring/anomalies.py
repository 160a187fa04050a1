"""Detectors over host-side loss and gradient-norm values. Each returns a verdict with a reason and
never acts; the trainer decides. Each round-trips through state_dict / load_state_dict."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mlflow_core.workflow.units import metric_value


class Verdict(str, Enum):
    OK = "ok"
    NONFINITE = "nonfinite"
    STALLED = "stalled"
    EXPLODING = "exploding"


@dataclass(frozen=True)
class StepAlarm:
    """What a step detector raises while training runs (a diagnosis's evidence-weighing `Finding` is
    mlflow_core.diagnostics')."""
    verdict: Verdict
    step: int
    reason: str


def first_nonfinite(values: list[float]) -> int | None:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            return i
    return None


class StallDetector:
    """Flags a training loss that has not improved by `min_delta` (relative) over `window` steps.
    Reports once per stall; a later improvement re-arms it."""

    def __init__(self, window: int, min_delta: float):
        self.window, self.min_delta = window, min_delta
        self.best = math.inf
        self.best_step = 0
        self.flagged = False

    def update(self, step: int, loss: float) -> StepAlarm | None:
        if not math.isfinite(loss):
            return None
        if loss < self.best * (1 - self.min_delta) or self.best == math.inf:
            self.best, self.best_step, self.flagged = loss, step, False
            return None
        if not self.flagged and step - self.best_step >= self.window:
            self.flagged = True
            return StepAlarm(Verdict.STALLED, step, f"training loss has not improved on {self.best:.4g} "
                           f"by {self.min_delta:.1%} for {step - self.best_step} steps")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "flagged": self.flagged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", math.inf)
        self.best_step = state.get("best_step", 0)
        self.flagged = state.get("flagged", False)


class GradExplosionDetector:
    """Flags a gradient norm more than `factor` times the median of the last `history` norms that
    is also more than twice the largest of them: near convergence the median gets small and
    ordinary batch noise reaches 10-40x it, which is not an explosion."""

    def __init__(self, factor: float, history: int = 100, warmup: int = 20):
        self.factor, self.history, self.warmup = factor, history, warmup
        self.norms: deque[float] = deque(maxlen=history)

    def update(self, step: int, grad_norm: float) -> StepAlarm | None:
        finding = None
        if not math.isfinite(grad_norm):
            return StepAlarm(Verdict.NONFINITE, step, f"gradient norm is {grad_norm}")
        if len(self.norms) >= self.warmup:
            median = statistics.median(self.norms)
            if median > 0 and grad_norm > self.factor * median and grad_norm > 2 * max(self.norms):
                finding = StepAlarm(Verdict.EXPLODING, step, f"gradient norm {grad_norm:.4g} is "
                                  f"{grad_norm / median:.1f}× the running median {median:.4g}")
        self.norms.append(grad_norm)
        return finding

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = deque(state.get("norms", []), maxlen=self.history)


class EarlyStopping:
    """Lightning-style: `update` returns (improved, should_stop, reason)."""

    def __init__(self, mode: str, patience: int, min_delta: float, enabled: bool = True, metric: str = ""):
        self.mode, self.patience, self.min_delta, self.enabled = mode, patience, min_delta, enabled
        self.metric = metric  # for the message: an accuracy is shown in %
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, value: float) -> tuple[bool, bool, str]:
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False, "improved"
        self.wait += 1
        if self.enabled and self.wait >= self.patience:
            return False, True, (f"no improvement beyond {self.min_delta:g} for {self.wait} validations "
                                 f"(best {metric_value(self.best, self.metric)} at epoch {self.best_epoch})")
        return False, False, f"no improvement for {self.wait} validation(s)"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.wait = state.get("wait", 0)

