"""The staged curriculum (`curriculum.stages`): at each stage's first epoch, and at a resume, its
share of the data, image size and batch size (a new training loader), its frozen layers and its
learning-rate scale. Without stages the run is one stage of the plain settings, and nothing changes."""

from __future__ import annotations

from typing import Any

from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.curriculum import (
    Stage,
    apply_freeze,
    plan_stages,
    rescale_learning_rate,
    stage_of,
    stage_samples,
    stage_train_data,
)


class Curriculum(Callback):
    state_key = "curriculum"

    def __init__(self, t: Any):
        self.stages: list[Stage] = plan_stages(t.cfg)
        self.staged = bool(t.cfg.curriculum.stages)
        self.stage: Stage | None = None
        self.lr_scale_applied = 1.0
        self.always_frozen = {n for n, p in t.model.named_parameters() if not p.requires_grad}
        # each stage's optimizer steps per epoch, and the run's total (what per-step schedules span)
        self.stage_steps = [t.steps_for(stage_samples(len(t.data.train), s), s.batch_size) for s in self.stages]
        self.total_steps = sum(n * (s.last_epoch - s.first_epoch + 1) for n, s in zip(self.stage_steps, self.stages))

    def on_epoch_start(self, t, s) -> None:
        stage = stage_of(self.stages, s.epoch)
        if self.stage is not None and stage.index == self.stage.index:
            return
        self.stage = stage
        if not self.staged:
            return
        data = stage_train_data(t.data.train, stage, t.cfg.reproducibility.seed, t.data.input_shape)
        t.use_train_data(data, stage.batch_size)
        s.steps_per_epoch = self.stage_steps[stage.index - 1]
        trainable_before = [p.requires_grad for p in t.model.parameters()]
        frozen = apply_freeze(t.model, stage, self.always_frozen)
        if trainable_before != [p.requires_grad for p in t.model.parameters()]:
            t.rewrap()  # DDP's gradient buckets follow requires_grad
        rescale_learning_rate(t.optimizer, t.schedule.scheduler, stage.lr_scale / self.lr_scale_applied)
        self.lr_scale_applied = stage.lr_scale
        if not any(r["stage"] == stage.index for r in s.metrics["stages"]):
            s.metrics["stages"].append({**stage.describe(), "steps_per_epoch": s.steps_per_epoch, "samples": len(data),
                                        "frozen_tensors": len(frozen),
                                        "learning_rate": t.optimizer.param_groups[0]["lr"]})
        t.log.info("stage %d from epoch %d: %s", stage.index, s.epoch, stage.describe())

    def on_epoch_record(self, t, s, record) -> None:
        if self.staged:
            record["stage"] = self.stage.index

    def state_dict(self) -> dict[str, Any]:
        return {"lr_scale_applied": self.lr_scale_applied}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.lr_scale_applied = (state or {}).get("lr_scale_applied", 1.0)  # the optimizer state carries it
