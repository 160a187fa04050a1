"""What the phases beyond a run add: `monitoring` (GPU sampling, MLflow, W&B), `optimization`
(the search) and `finalization` (seeds, folds, export)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mlflow_core.config.section import Section


class MonitoringSection(Section):
    nan_action: Literal["stop", "warn"] = Field("stop", description="On a non-finite loss.")
    check_every_n_steps: int = Field(10, ge=1, description="Losses are checked on the host in "
                                     "windows of this many steps, so no step waits for the GPU; the "
                                     "first bad step is still found exactly. On GPUs the window's input "
                                     "batches stay referenced in host memory (for the NaN replay): lower "
                                     "this for very large batches.")
    stall_window_steps: int = Field(200, ge=10, description="A training loss that does not improve "
                                    "by stall_min_delta over this many steps is flagged as stalled.")
    stall_min_delta: float = Field(1e-3, ge=0.0, description="Relative improvement that counts.")
    explode_factor: float = Field(10.0, gt=1.0, description="A gradient norm this many times the "
                                  "running median is flagged as exploding.")
    gpu_sample_interval_s: float = Field(0.5, gt=0.0, le=60.0)
    gpu_utilization_target: float = Field(60.0, ge=0.0, le=100.0, description="Percent.")
    tensorboard: bool = Field(False, description="Also write TensorBoard events to runs/<run>/tensorboard/: "
                              "per-step loss, gradient norm, LR and GPU use, per-epoch metrics, and the "
                              "hyperparameters with the run's results (`tensorboard --logdir runs`). Needs "
                              "pip install 'wf-phases[tensorboard]'.")
    wandb: bool = Field(False, description="Also log each run to Weights & Biases: the resolved config, per-step "
                        "loss, gradient norm and LR per monitoring window, epoch metrics, wf's own GPU figures, and "
                        "the results. Offline (runs/<run>/wandb/, uploaded later with `wandb sync`) unless "
                        "WANDB_MODE says otherwise; a missing key or network never stops a run. Needs "
                        "pip install 'wf-phases[wandb]'.")
    wandb_project: str | None = Field(None, description="The W&B project (default: project.name).")
    mlflow: bool = Field(False, description="Also track each run in MLflow: one MLflow run per wf run (trials, "
                         "comparison runs and final seeds nested under their phase's run), the flattened config as "
                         "params, per-step and per-epoch figures, wf's GPU figures, the report and metrics.json as "
                         "artifacts; finalization registers the verified model, `wf release` sets its alias. Store: "
                         "MLFLOW_TRACKING_URI, else mlflow_uri, else the project's mlflow.db. Never stops a run. "
                         "Needs pip install 'wf-phases[mlflow]'.")
    mlflow_uri: str | None = Field(None, description="The MLflow tracking URI (default: sqlite:///<project>/mlflow.db; "
                                   "MLFLOW_TRACKING_URI wins over it).")
    mlflow_log_checkpoints: bool = Field(False, description="Also log each training run's best checkpoint and its "
                                         "kept training states (checkpoints/replay/) as artifacts, what `wf verify "
                                         "--from mlflow` recomputes its claims from (a local store copies them: "
                                         "twice the disk).")
    mlflow_system_metrics: bool = Field(False, description="Also log MLflow's system metrics (CPU, memory, disk, "
                                        "network, every GPU of the node: system/*, every 10 s) to each phase's "
                                        "MLflow run, as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true does. Needs psutil "
                                        "(in the mlflow extra).")


class SearchParameter(Section):
    """One dimension of the search space, named by its dotted config key."""
    type: Literal["float", "int", "categorical"] = Field(..., description="How Optuna samples it.")
    low: float | None = Field(None, description="float/int: lower bound.")
    high: float | None = Field(None, description="float/int: upper bound.")
    log: bool = Field(False, description="float/int: sample uniformly in log space.")
    step: float | None = Field(None, gt=0.0, description="float/int: grid step (not with log).")
    choices: list[Any] | None = Field(None, min_length=1, description="categorical: the values to choose from.")

    @model_validator(mode="after")
    def _bounds(self) -> SearchParameter:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        if self.log and self.low <= 0:
            raise ValueError("log sampling needs low > 0")
        if self.log and self.step:
            raise ValueError("step and log cannot be combined")
        return self


def _default_search_space() -> dict[str, SearchParameter]:
    return {"training.learning_rate": SearchParameter(type="float", low=1e-4, high=1e-2, log=True),
            "training.weight_decay": SearchParameter(type="float", low=1e-6, high=1e-2, log=True)}


class OptimizationSection(Section):
    search_space: dict[str, SearchParameter] = Field(
        default_factory=_default_search_space, description="Dotted config keys (e.g. training.learning_rate, "
        "training.optimizer, training.batch_size, model.dropout, training.scheduler.name) and how to sample them.")
    n_trials: int = Field(12, ge=1, description="Trials in the study, counting those of an interrupted sweep.")
    trial_epochs: int | None = Field(None, ge=1, description="Epochs per trial (default: training.epochs).")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="grid needs every parameter "
                                                       "categorical or stepped.")
    pruner: Literal["median", "none"] = Field("median", description="median: stop a trial whose validation "
                                              "metric is worse, beyond the noise, than the median of the completed "
                                              "trials at that epoch.")
    pruner_warmup_epochs: int | None = Field(None, ge=1, description="A trial may be pruned at the end of this "
                                             "epoch, not before (default: half the epochs of a trial, rounded up).")
    pruner_startup_trials: int | None = Field(None, ge=1, description="Trials that must complete before any is "
                                              "pruned (default: a third of n_trials, at least 2).")
    pruner_min_delta: float | None = Field(None, ge=0.0, description="How much worse than the median a trial must "
                                           "be to be pruned (default: the sampling noise of an accuracy-like metric "
                                           "on the validation set; 0 for a loss).")
    storage: str | None = Field(None, description="An Optuna RDB URL (postgresql://…, mysql://…) shared by "
                                "several machines; default sqlite:///.wf/optuna.db in the project.")
    study_name: str | None = Field(None, description="Default: the project name and a hash of the search "
                                   "space, so that a restarted sweep continues its study.")
    seeds: int = Field(3, ge=2, le=20, description="Seeds for the fair comparison of the best trial with the "
                       "baseline; both are re-run with each.")
    significance: float = Field(0.05, gt=0.0, lt=0.5, description="One-sided Welch t-test level that the "
                                "improvement over the baseline must reach.")
    lr_find: bool = Field(True, description="Run an LR range test first and report its suggestion.")
    timeout_s: float | None = Field(None, gt=0.0, description="Stop starting new trials after this long.")


class FinalizationSection(Section):
    seeds: int = Field(1, ge=1, le=20, description="Train the final config with this many seeds; the test "
                       "metrics are reported as mean ± std over them.")
    epochs: int | None = Field(None, ge=1, description="The final training budget (default: training.epochs).")
    folds: int | None = Field(None, ge=2, le=20, description="k-fold cross-validation: train and validation "
                              "samples pooled and split into k folds (stratified for classification); one model "
                              "per fold and seed, each validated on its fold.")
    ensemble: bool = Field(True, description="With several final models (seeds, folds): also score their averaged "
                           "class probabilities on the test split.")
    tta: list[Literal["hflip", "vflip"]] = Field(
        [], description="Test-time augmentation: each model's test predictions average the class "
        "probabilities of the image and its flips (a predicted mask is flipped back first); the report gives "
        "the scores without it too. Image data only.")
    export: list[Literal["state_dict", "torch_export", "onnx"]] = Field(
        ["state_dict", "torch_export"], description="Artifacts to write to export/, each reloaded and compared "
        "with the trained model on a test batch. onnx needs the onnx extra (pip install 'wf-phases[onnx]'), "
        "verified with onnxruntime.")
    export_tolerance: float = Field(1e-4, gt=0.0, description="Largest absolute difference of the logits "
                                    "between the trained model and a reloaded export.")
