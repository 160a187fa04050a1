"""The parts of a training run beyond the bare optimizer step, one file each, in the order the loop
calls them. A new recipe is a Callback in its own file and one line here.

Order matters where parts talk to each other within one hook: the curriculum decides the stage
before mixing reads it; the deadline is checked before the monitor decides to read back its window;
the monitor reads back before a resume point is saved (resume points need a closed window); early
stopping judges an epoch before its checkpoints are written; metrics.json is written before the
next epoch's resume point, which carries it."""

from __future__ import annotations

from typing import Any

from mlflow_core.training.callbacks.base import Callback, Callbacks, Window
from mlflow_core.training.callbacks.checkpoints import Checkpoints
from mlflow_core.training.callbacks.early_stopping import EarlyStopping
from mlflow_core.training.callbacks.ema import Ema
from mlflow_core.training.callbacks.interruption import STOP_SIGNALS, TIME_LIMIT, Interruption
from mlflow_core.training.callbacks.metrics_file import MetricsFile
from mlflow_core.training.callbacks.mixing import Mixing
from mlflow_core.training.callbacks.mlflow import MlflowTracking
from mlflow_core.training.callbacks.monitor import Monitor, ProgressEvent
from mlflow_core.training.callbacks.replay import ReplayStates
from mlflow_core.training.callbacks.resume import ResumePoints, restore
from mlflow_core.training.callbacks.tensorboard import TensorBoard, WeightsAndBiases

__all__ = ["STOP_SIGNALS", "TIME_LIMIT", "Callback", "Callbacks", "ProgressEvent", "Window", "callbacks_for",
           "restore"]


def callbacks_for(t: Any, *, windowed: bool) -> Callbacks:
    """The run's callbacks, built after the model, data and optimizer (some wrap or read them)."""
    parts: list[Callback | None] = [
        t.curriculum,  # built with the schedule, which spans its stages' steps
        Mixing.configured(t),
        Ema.configured(t),
        Interruption(t.stop_on_signals, t.deadline),
        Monitor(t, windowed),
        TensorBoard.configured(t),
        EarlyStopping(t.cfg, t.on_epoch),
        Checkpoints(t.cfg),
        MetricsFile(),
        WeightsAndBiases.configured(t),  # after metrics.json: it reports the run's final status
        MlflowTracking.configured(t),
        resume_points := ResumePoints(t),
        ReplayStates(t, resume_points),  # after the resume point it keeps a link to
    ]
    return Callbacks([p for p in parts if p is not None])
