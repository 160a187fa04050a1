"""An exponential moving average of the weights (`training.ema`), kept by torch's AveragedModel:
updated every `every_n_steps` optimizer steps; validated next to the raw weights, and with
`evaluate: true` the weights that validation judges and checkpoints carry."""

from __future__ import annotations

from typing import Any

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mlflow_core.training.callbacks.base import Callback


class Ema(Callback):
    state_key = "ema"
    resume_only = True  # best/last checkpoints carry the evaluated weights themselves

    def __init__(self, model: Any, decay: float, every_n_steps: int, evaluate: bool):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.every_n_steps, self.evaluate = every_n_steps, evaluate

    @classmethod
    def configured(cls, t: Any) -> Ema | None:
        ema = t.cfg.training.ema
        return cls(t.model, ema.decay, ema.every_n_steps, ema.evaluate) if ema.enabled else None

    def on_step_end(self, t, s, step) -> None:
        if s.global_step % self.every_n_steps == 0:
            self.averaged.update_parameters(t.model)

    def on_validation(self, t, s, record, figures):
        """Both views reported; the configured one is `val_*`."""
        averaged = t.validate(self.averaged.module)
        record.update({f"raw_{k}": v for k, v in figures.items()})
        record.update({f"ema_{k}": v for k, v in averaged.items()})
        return averaged if self.evaluate else figures

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.averaged.load_state_dict(state)
