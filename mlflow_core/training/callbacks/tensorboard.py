"""Experiment trackers, fed from the values each monitoring window reads back anyway (no extra
device sync): TensorBoard events (`monitoring.tensorboard: true`: step curves, epoch figures, and at
the end the hyperparameters with the run's results; a resumed run shows each step once) and
Weights & Biases (`monitoring.wandb: true`)."""

from __future__ import annotations

from typing import Any

from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.tracking import TensorBoardTracker, WandbTracker, run_hparams
from mlflow_core.workflow.git import git
from mlflow_core.workflow.runs import run_kind


class _Tracking(Callback):
    """Feeds a tracker (steps, epochs) from the run; subclasses open and close it."""
    tracker: Any = None

    def on_window_end(self, t, s, window) -> None:
        self.tracker.steps(window.steps, window.losses, window.grad_norms, window.lr,
                           t.gpu_sampler.latest() if t.gpu_sampler else None)

    def on_epoch_end(self, t, s, record) -> None:
        self.tracker.epoch(record, s.global_step - 1)


class TensorBoard(_Tracking):
    tracker: TensorBoardTracker | None = None

    @classmethod
    def configured(cls, t: Any) -> TensorBoard | None:
        return cls() if t.cfg.monitoring.tensorboard and t.run_dir else None

    def on_fit_start(self, t, s) -> None:
        self.tracker = TensorBoardTracker(t.run_dir, t.log, resumed_at=s.global_step if s.resume else None)

    def on_fit_end(self, t, s) -> None:
        if self.tracker is not None:
            self.tracker.close(run_hparams(t.cfg), tracked_results(s.metrics))


RESULT = "result/"  # the prefix of a run's results, the same in every tracker


def tracked_results(metrics: dict[str, Any]) -> dict[str, float]:
    """The run's results next to its hyperparameters: the best value of the validation metric and
    the last epoch's validation figures, named alike in every tracker (`result/best_val_loss` in
    TensorBoard's HParams, W&B and MLflow)."""
    results: dict[str, float] = {}
    if metrics.get("best"):
        results[f"{RESULT}best_{metrics['best']['metric']}"] = metrics["best"]["value"]
    last = metrics["epochs"][-1] if metrics["epochs"] else {}
    results.update({f"{RESULT}{k}": v for k, v in last.items() if k.startswith("val_") and isinstance(v, float)})
    return results


class WeightsAndBiases(_Tracking):
    tracker: WandbTracker | None = None

    @classmethod
    def configured(cls, t: Any) -> WeightsAndBiases | None:
        return cls() if t.cfg.monitoring.wandb and t.run_dir else None

    def on_fit_start(self, t, s) -> None:
        project = t.cfg.monitoring.wandb_project or t.cfg.project.name
        self.tracker = WandbTracker(t.run_dir, t.run_id or t.run_dir.name, project, t.cfg.model_dump(mode="json"),
                                    t.log, resumed=bool(s.resume), group=t.cfg.project.name, job_type=t.phase,
                                    tags=[t.phase, run_kind(t.run_dir, t.phase)],
                                    commit=git(t.project_root, "rev-parse", "HEAD"))

    def on_fit_end(self, t, s) -> None:
        if self.tracker is None:
            return
        sync = self.tracker.close(tracked_results(s.metrics), failed=s.metrics.get("status") not in
                                  ("completed", "early_stopped", "pruned"))
        if sync:
            t.log.info("Weights & Biases logged offline; upload with: %s", sync)
