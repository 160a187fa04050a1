"""The one protocol every part of a training run beyond the bare step follows (Lightning's callback
shape): hooks the loop calls at fixed points, and a `state_dict` that checkpoints carry under
`state_key`, so that a resume restores every part without the loop knowing what the parts are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import torch

    from mlflow_core.training.fit_state import FitState
    from mlflow_core.training.step import StepResult


class Trainer(Protocol):
    """What a callback (and the loop, training/loop.py) may use of the trainer (training/trainer.py):
    an interface, so that neither imports the trainer, which builds them."""

    cfg: Any  # the run's WorkflowConfig
    run_id: str | None
    run_dir: Path | None
    data: Any  # DataBundle
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # LrSchedule
    step: Any  # OptimizerStep
    precision: Any  # the precision plan
    strategy: Any  # SingleProcess or DataParallel (training/parallel.py)
    train_loader: Any
    epoch_sampler: Any
    prefetch: int
    callbacks: Any
    curriculum: Any
    interruption: Any
    monitor: Any
    mlflow: Any  # monitoring/mlflow_runs.TrainingLink, on the writing rank
    gpu_sampler: Any
    log: logging.Logger
    recipe: dict[str, Any]
    anomalies: list[dict[str, Any]]
    deadline: float | None
    keeps_resume: bool
    limit_train_steps: int | None
    stop_on_signals: bool
    on_epoch: Any
    on_progress: Callable[[Any], None]
    val_support: list[int]  # the validation split's true classes' counts, set by validate()

    def start(self, max_steps: int | None) -> FitState: ...
    def evaluated_model(self) -> torch.nn.Module: ...
    def new_tally(self, generator_state: torch.Tensor | None = None) -> Any: ...
    def stateful_parts(self) -> Iterator[tuple[str, Any]]: ...
    def rewrap(self) -> None: ...
    def use_train_data(self, dataset: Any, batch_size: int) -> None: ...
    def steps_for(self, samples: int, batch_size: int) -> int: ...
    def training_batch(self, s: FitState, inputs: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def validate(self, model: torch.nn.Module | None = None) -> dict[str, Any]: ...


class Callback:
    """Every hook does nothing unless overridden. `t` is the trainer, `s` the run's FitState."""

    state_key: str | None = None  # None: nothing to checkpoint
    resume_only = False  # True: carried by resume.pt only, not by best/last/periodic checkpoints

    def on_fit_start(self, t: Trainer, s: FitState) -> None: ...
    def on_epoch_start(self, t: Trainer, s: FitState) -> None: ...

    def on_train_batch(self, t: Trainer, s: FitState, inputs: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs, targets

    def on_before_optimizer_step(self, t: Trainer, s: FitState, step: StepResult) -> None: ...
    def on_step_end(self, t: Trainer, s: FitState, step: StepResult) -> None: ...

    def on_window_end(self, t: Trainer, s: FitState, window: Window) -> None:
        """A check window's figures, read back to the host once."""

    def on_validation(self, t: Trainer, s: FitState, record: dict[str, Any],
                      figures: dict[str, Any]) -> dict[str, Any]:
        """May add figures to the epoch's record; returns the figures the run is judged on."""
        return figures

    def on_epoch_record(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None: ...
    def on_validation_end(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None: ...
    def on_epoch_end(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None: ...
    def on_fit_end(self, t: Trainer, s: FitState) -> None: ...

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None: ...


class Window:
    """A check window's steps with their losses and gradient norms, on the host."""

    __slots__ = ("epoch", "grad_norms", "losses", "lr", "steps")

    def __init__(self, epoch: int, steps: list[int], losses: list[float], grad_norms: list[float], lr: float):
        self.epoch, self.steps, self.losses, self.grad_norms, self.lr = epoch, steps, losses, grad_norms, lr


class Callbacks:
    """The run's callbacks, called in registry order; `on_fit_end` reaches every callback even when
    one fails (files closed, signal handlers restored), then raises the first failure."""

    def __init__(self, callbacks: list[Callback]):
        self.items = callbacks

    def __iter__(self):
        return iter(self.items)

    def find(self, kind: type) -> Any:
        return next((c for c in self.items if isinstance(c, kind)), None)

    def on_fit_start(self, t: Trainer, s: FitState) -> None:
        for c in self.items:
            c.on_fit_start(t, s)

    def on_epoch_start(self, t: Trainer, s: FitState) -> None:
        for c in self.items:
            c.on_epoch_start(t, s)

    def on_train_batch(self, t: Trainer, s: FitState, inputs: Any, targets: Any) -> tuple[Any, Any]:
        for c in self.items:
            inputs, targets = c.on_train_batch(t, s, inputs, targets)
        return inputs, targets

    def on_before_optimizer_step(self, t: Trainer, s: FitState, step: StepResult) -> None:
        for c in self.items:
            c.on_before_optimizer_step(t, s, step)

    def on_step_end(self, t: Trainer, s: FitState, step: StepResult) -> None:
        for c in self.items:
            c.on_step_end(t, s, step)

    def on_window_end(self, t: Trainer, s: FitState, window: Window) -> None:
        for c in self.items:
            c.on_window_end(t, s, window)

    def on_validation(self, t: Trainer, s: FitState, record: dict[str, Any], figures: dict[str, Any]) -> dict:
        for c in self.items:
            figures = c.on_validation(t, s, record, figures)
        return figures

    def on_epoch_record(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None:
        for c in self.items:
            c.on_epoch_record(t, s, record)

    def on_validation_end(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None:
        for c in self.items:
            c.on_validation_end(t, s, record)

    def on_epoch_end(self, t: Trainer, s: FitState, record: dict[str, Any]) -> None:
        for c in self.items:
            c.on_epoch_end(t, s, record)

    def on_fit_end(self, t: Trainer, s: FitState) -> None:
        first: BaseException | None = None
        for c in self.items:
            try:
                c.on_fit_end(t, s)
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first
