"""Where a training run is: the position (epoch, step), the record being written, and how it ends.

The loop moves the position; callbacks read it and may ask the run to stop. A stop is a status and
a reason: `failed_nan` and `interrupted` end the epoch at once (no validation), `early_stopped` and
`pruned` end the run after the epoch's checkpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_core.training.step import EpochTally

ENDS_EPOCH_AT_ONCE = ("failed_nan", "interrupted")


@dataclass
class FitState:
    metrics: dict[str, Any]
    epochs: int
    max_steps: int | None = None
    first_epoch: int = 1
    epoch: int = 0
    step_in_epoch: int = 0
    first_step: int = 1  # of the epoch: past 1 when a resumed epoch continues
    steps_per_epoch: int = 0
    global_step: int = 0
    status: str = "completed"
    stop_reason: str | None = None
    mixing: bool = False
    tally: EpochTally | None = None
    validated_value: float | None = None  # the epoch's validation metric, when it was validated
    resume: dict[str, Any] | None = None  # the resume checkpoint this run continues
    started: float = field(default_factory=time.perf_counter)
    started_at_step: int = 0  # global_step when this process started training: past 0 on a resume
    epoch_started: float = 0.0

    def stop(self, status: str, reason: str) -> None:
        self.status, self.stop_reason = status, reason

    @property
    def stopping_now(self) -> bool:
        """A stop that ends the epoch before its validation."""
        return self.status in ENDS_EPOCH_AT_ONCE

    @property
    def stopping(self) -> bool:
        return self.status != "completed"

    @property
    def max_steps_reached(self) -> bool:
        return bool(self.max_steps and self.global_step >= self.max_steps)

    @property
    def last_step_of_epoch(self) -> bool:
        return self.step_in_epoch == self.steps_per_epoch
