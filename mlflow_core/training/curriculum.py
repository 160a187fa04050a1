"""Staged curriculum (progressive resizing and hybrid schedules of ImageNet recipes): the run is a sequence of
stages, each with its own image size, batch size, share of the training data, learning-rate scale,
frozen layers and mixing switch. The trainer asks which stage an epoch belongs to and rebuilds what
changes at each transition; validation always sees the full-size validation split, so the best
checkpoint is chosen on one scale throughout."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mlflow_core.config.recipe import StageSection
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.training.augment import TransformedDataset


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int  # 1-based
    first_epoch: int
    last_epoch: int
    image_size: int | None
    batch_size: int
    data_fraction: float
    lr_scale: float
    freeze: tuple[str, ...]
    mixing: bool | None  # None: as configured in augmentation

    def describe(self) -> dict[str, Any]:
        return {"stage": self.index, "epochs": [self.first_epoch, self.last_epoch], "image_size": self.image_size,
                "batch_size": self.batch_size, "data_fraction": self.data_fraction, "lr_scale": self.lr_scale,
                "freeze": list(self.freeze), "mixing": self.mixing}


def plan_stages(cfg: WorkflowConfig) -> list[Stage]:
    """The configured stages with their epoch ranges; one stage of the plain settings when none are."""
    sections: list[StageSection] = cfg.curriculum.stages
    if not sections:
        return [Stage(1, 1, cfg.training.epochs, None, cfg.training.batch_size, 1.0, 1.0, (), None)]
    out, first = [], 1
    for i, s in enumerate(sections, 1):
        out.append(Stage(i, first, first + s.epochs - 1, s.image_size, s.batch_size or cfg.training.batch_size,
                         s.data_fraction, s.lr_scale, tuple(s.freeze), s.mixing))
        first += s.epochs
    return out


def stage_of(stages: list[Stage], epoch: int) -> Stage:
    return next(s for s in stages if s.first_epoch <= epoch <= s.last_epoch)


def stage_samples(available: int, stage: Stage) -> int:
    """How many training samples the stage uses."""
    return available if stage.data_fraction >= 1.0 else max(1, round(stage.data_fraction * available))


def stage_train_data(train: Dataset, stage: Stage, seed: int, input_shape: tuple[int, ...]) -> Dataset:
    """The stage's share of the training split (a fixed random subset, growing with the fraction:
    the 50 % of stage 1 is inside the 75 % of stage 2), resized to the stage's image size."""
    from torchvision.transforms import v2

    data: Dataset = train
    if stage.data_fraction < 1.0:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        data = Subset(train, sorted(order[: stage_samples(len(train), stage)]))
    if stage.image_size and tuple(input_shape[1:]) != (stage.image_size, stage.image_size):
        data = TransformedDataset(data, v2.Resize((stage.image_size, stage.image_size), antialias=True))
    return data


def apply_freeze(model: nn.Module, stage: Stage, always_frozen: set[str]) -> list[str]:
    """requires_grad per the stage: its prefixes frozen (with model.freeze's), everything else trainable."""
    frozen = []
    for name, param in model.named_parameters():
        stage_frozen = any(name == p or name.startswith(p.rstrip(".") + ".") for p in stage.freeze)
        param.requires_grad_(not (stage_frozen or name in always_frozen))
        if stage_frozen:
            frozen.append(name)
    return frozen


def rescale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, ratio: float) -> None:
    """Multiply the learning rate from here on by `ratio`: the optimizer's current rate, the
    scheduler's base rates (nested ones too) and OneCycle's anchors, so that every scheduler
    continues its shape at the new scale. All of it lives in state dicts, so a resume keeps it."""
    if ratio == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        for key in ("initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= ratio
    pending = [scheduler] if scheduler is not None else []
    while pending:
        current = pending.pop()
        if hasattr(current, "base_lrs"):
            current.base_lrs = [b * ratio for b in current.base_lrs]
        if hasattr(current, "min_lrs"):  # ReduceLROnPlateau's floor
            current.min_lrs = [m * ratio for m in current.min_lrs]
        pending.extend(getattr(current, "_schedulers", []))
