"""The optimizer, the learning-rate schedule and the device, built from the config."""

from __future__ import annotations

from typing import Any

import torch

from mlflow_core.config.recipe import TrainingSection
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError

PER_STEP_SCHEDULERS = ("warmup_cosine", "onecycle")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"training.device is {name!r} but torch sees no CUDA device "
                             "(set training.device: auto or cpu)")
    return torch.device(name)


def effective_learning_rate(t: TrainingSection, world_size: int = 1) -> float:
    """learning_rate, or with `lr_scaling: linear` learning_rate × effective batch / 256."""
    if t.lr_scaling == "linear":
        return t.learning_rate * t.batch_size * t.accumulate_steps * world_size / 256
    return t.learning_rate


def build_optimizer(t: TrainingSection, params: list[torch.Tensor], world_size: int = 1) -> torch.optim.Optimizer:
    lr = effective_learning_rate(t, world_size)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=t.weight_decay)


def build_scheduler(cfg: WorkflowConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    first_steps_per_epoch: int) -> Any:
    """torch's own scheduler for `training.scheduler` (None for a constant rate). Per-step schedules
    span `total_steps`; warmup is counted in the first stage's steps per epoch."""
    s, epochs = cfg.training.scheduler, cfg.training.epochs
    lr_scheduler = torch.optim.lr_scheduler
    if s.name == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=s.max_lr or effective_learning_rate(cfg.training), total_steps=total_steps,
            pct_start=s.pct_start, div_factor=s.div_factor, final_div_factor=s.final_div_factor,
            cycle_momentum=s.cycle_momentum, base_momentum=s.base_momentum, max_momentum=s.max_momentum)
    if s.name == "warmup_cosine":
        warmup = min(round(s.warmup_epochs * first_steps_per_epoch), total_steps - 1)
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=s.min_lr)
        if warmup <= 0:
            return cosine
        linear = lr_scheduler.LinearLR(optimizer, start_factor=s.warmup_start_factor, end_factor=1.0,
                                       total_iters=warmup)
        return lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    if s.name == "step":
        return lr_scheduler.StepLR(optimizer, s.step_size, s.gamma)
    if s.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=s.min_lr)
    if s.name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode=cfg.validation.mode, factor=s.factor,
                                              patience=s.patience, min_lr=s.min_lr)
    return None


class LrSchedule:
    """The scheduler and when it steps: after every optimizer step (warmup-cosine, one-cycle) or
    after every epoch (on the validation metric for plateau)."""

    state_key, resume_only = "scheduler", False

    def __init__(self, scheduler: Any, name: str):
        self.scheduler = scheduler
        self.per_step = name in PER_STEP_SCHEDULERS

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, value: float | None) -> None:
        """`value`: the epoch's validation metric, None when the epoch was not validated."""
        if self.scheduler is None or self.per_step:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if value is not None:
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)
