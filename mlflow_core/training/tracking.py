"""TensorBoard event files for a run (`monitoring.tensorboard: true`, experiment tracking as labs use it).

Written by the process that writes the run's files (rank 0 under DDP) to `runs/<run>/tensorboard/`,
with torch's SummaryWriter: per step the loss, gradient norm and learning rate (from the values each
monitoring window reads back anyway: no extra device sync), per epoch every figure of the epoch's
record, and at the end the hyperparameters with the run's results for the HParams dashboard.
`tensorboard --logdir runs` then compares every run, trial and seed of the project.

The event files are for looking at, not evidence: metrics.json and steps.csv are the record. So a
failing write here (a full disk) is logged once and ends the tracking, not the run."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from mlflow_core.errors import UserInputError

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UserInputError("monitoring.tensorboard is on and the tensorboard package is not installed.",
                             hint="Install it with `pip install 'wf[tensorboard]'`, or set "
                             "monitoring.tensorboard: false.")


class TensorBoardTracker:
    def __init__(self, run_dir: Path, log: logging.Logger, *, resumed_at: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log = log
        self.directory = run_dir / TENSORBOARD_DIR
        self.writer: Any = None
        # a resumed run trains its steps from `resumed_at` again: the events an interrupted process
        # wrote for them are hidden, so that each step shows once
        try:
            self.writer = SummaryWriter(str(self.directory), purge_step=resumed_at)
        except OSError as exc:
            log.warning("TensorBoard events are not written to %s: %s", self.directory, exc)

    def steps(self, steps: list[int], losses: list[float], norms: list[float], lr: float,
              gpu: dict[str, float] | None) -> None:
        def write() -> None:
            for step, loss, norm in zip(steps, losses, norms):
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/grad_norm", norm, step)
            self.writer.add_scalar("train/lr", lr, steps[-1])
            if gpu is not None:
                self.writer.add_scalar("gpu/utilization_percent", gpu["utilization"], steps[-1])
                self.writer.add_scalar("gpu/memory_used_mib", gpu["memory_used_mib"], steps[-1])
        self._guarded(write)

    def epoch(self, record: dict[str, Any], last_step: int) -> None:
        """The epoch's figures at its last step, so that they line up with the step curves (and a
        resume from the epoch's end keeps them)."""
        def write() -> None:
            for key, value in record.items():
                if key == "epoch" or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, last_step)
                elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                    for index, item in enumerate(value):  # per class (IoU) or per rank (data wait)
                        self.writer.add_scalar(f"epoch/{key}/{index}", item, last_step)
            self.writer.add_scalar("epoch/epoch", record["epoch"], last_step)
            self.writer.flush()  # an epoch's events survive a kill
        self._guarded(write)

    def close(self, hparams: dict[str, Any], results: dict[str, float]) -> None:
        if self.writer is None:
            return
        finite = {f"hparam/{k}": v for k, v in results.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._guarded(lambda: self.writer.add_hparams(hparams, finite, run_name="."))
        self._guarded(lambda: self.writer.close())
        self.writer = None

    def _guarded(self, write: Any) -> None:
        if self.writer is None:
            return
        try:
            write()
        except OSError as exc:
            self.log.warning("TensorBoard events are no longer written to %s: %s", self.directory, exc)
            self.writer = None


def run_hparams(cfg: Any) -> dict[str, Any]:
    """What the HParams dashboard compares runs by: the settings a sweep or a person changes."""
    t = cfg.training
    return {"model": cfg.model.name, "optimizer": t.optimizer, "learning_rate": t.learning_rate,
            "batch_size": t.batch_size, "weight_decay": t.weight_decay, "epochs": t.epochs,
            "scheduler": t.scheduler.name, "precision": t.precision, "seed": cfg.reproducibility.seed,
            "label_smoothing": t.label_smoothing, "loss": t.loss.name}
