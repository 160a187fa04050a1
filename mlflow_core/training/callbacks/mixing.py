"""MixUp / CutMix of the training batches (`augmentation.mixup_alpha`, `cutmix_alpha`), on for the
epochs the config (or the curriculum stage) says, off for the last `mix_off_last_fraction`."""

from __future__ import annotations

from typing import Any

from mlflow_core.training.augment import BatchMixer
from mlflow_core.training.callbacks.base import Callback


class Mixing(Callback):
    def __init__(self, mixer: BatchMixer):
        self.mixer = mixer

    @classmethod
    def configured(cls, t: Any) -> Mixing | None:
        cfg = t.cfg
        if not cfg.augmentation.mixing:
            return None
        return cls(BatchMixer(cfg.augmentation, t.data.num_classes, cfg.training.epochs, t.data.input_shape))

    def recipe(self, cfg: Any) -> dict[str, Any]:
        return {"mixing": cfg.augmentation.model_dump(include={"mixup_alpha", "cutmix_alpha", "mix_probability",
                                                               "mix_off_last_fraction"}),
                "mixing_last_epoch": self.mixer.last_epoch}

    def on_epoch_start(self, t, s) -> None:
        stage = t.curriculum.stage
        s.mixing = stage.mixing if stage.mixing is not None else self.mixer.active(s.epoch)  # the stage decides

    def on_train_batch(self, t, s, inputs, targets):
        return self.mixer(inputs, targets) if s.mixing else (inputs, targets)

    def on_epoch_record(self, t, s, record) -> None:
        record["mixed"] = s.mixing
