"""The training config schema (`training_config.yaml`), the Phase 2 keys first.

Every model forbids unknown keys so that a misspelling is an error, not a silently ignored setting.
Defaults are the conservative choices of a first baseline.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlflow_core.errors import ConfigError, did_you_mean

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Section(BaseModel):
    # defer_build: each section is built once, inside the WorkflowConfig schema, not also on its own
    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True)


def _check_target(value: str | None) -> str | None:
    if value is not None and not _IMPORT_PATH.match(value):
        raise ValueError(f"must look like 'module:attribute' (e.g. 'my_data:build'), got {value!r}")
    return value


class ProjectSection(_Section):
    name: str = Field("wf-project", min_length=1, description="Shown in reports.")


class DataSection(_Section):
    source: Literal["digits", "npz", "imagefolder", "csv", "custom"] = Field(
        "digits", description="digits: scikit-learn's bundled handwritten digits; npz: a folder of "
        "one-.npz-per-sample patches; imagefolder: torchvision ImageFolder (PNG, JPEG, TIFF / GeoTIFF of any band "
        "count); csv: train.csv, val.csv (and test.csv) in data.path naming each image file and its label (or "
        "mask); custom: your callable.")
    path_column: str = Field("path", description="csv: the column of image files, relative to data.path.")
    label_column: str = Field("label", description="csv: the column of labels (class names or 0-based ids).")
    mask_column: str = Field("mask", description="csv, task segmentation: the column of mask files (one band "
                             "of class ids: PNG or TIFF).")
    path: str | None = Field(None, description="npz/imagefolder: folder with train/ and val/ (and "
                             "optionally test/) inside, relative to the project.")
    target: str | None = Field(None, description="custom: 'module:callable' returning "
                               "{'train': Dataset, 'val': Dataset[, 'test': Dataset]}.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="custom: passed to the callable.")
    num_classes: int | None = Field(None, ge=2, description="Inferred from the data when omitted.")
    class_names: list[str] | None = Field(None, description="A name for each class id, in order (0, 1, …): shown in "
                                          "reports, the confusion matrix, the model card and export/manifest.json. "
                                          "ImageFolder data takes its folder names when omitted.")
    image_key: str = Field("image", description="npz: array key of the input.")
    label_key: str = Field("label", description="npz: array key of the label.")
    mask_key: str = Field("mask", description="npz, task segmentation: array key of the mask (H, W) of class ids.")
    sampling: Literal["uniform", "class_balanced", "pixel_balanced"] = Field(
        "uniform", description="Training sample order: uniform shuffling; class_balanced (classification: each "
        "sample drawn with weight 1 / its class's frequency); pixel_balanced (segmentation: each "
        "sample weighted by how rare its pixels' classes are), with replacement. Under DDP the ranks share "
        "one weighted draw per epoch, each rank its part.")
    image_size: int | None = Field(None, ge=8, description="imagefolder: resize to this square size.")
    channels: int | None = Field(None, ge=1, le=4, description="imagefolder: read every image with this many "
                                 "channels (1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA); by default the "
                                 "images' own, which the setup report states.")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="digits: held-out share for val.")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="digits: held-out share for test.")
    split_seed: int = Field(0, description="digits: seed of the stratified split (kept apart from "
                            "the training seed so that changing one never changes the other).")
    pack: Literal["auto", "on", "off"] = Field(
        "auto", description="npz: read each split from a packed, memory-mapped copy (.wf/cache/packs/, built from "
        "the files by `wf data pack` or `wf phase setup`): one gather per batch instead of one archive per sample. "
        "auto: use a pack that matches the files, else the files; on: build or rebuild it when missing or stale; "
        "off: always the files.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    pin_memory: bool | Literal["auto"] = Field("auto", description="auto: on when training on CUDA.")
    normalize: Literal["none", "per_channel"] = Field(
        "none", description="per_channel: subtract each channel's mean and divide by its standard deviation, "
        "both measured on (up to 2,048 evenly spaced) training samples; applied to every split.")

    _check_target = field_validator("target")(lambda cls, v: _check_target(v))

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off as true/false: take them as the words people wrote."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _source_needs(self) -> DataSection:
        if self.source in ("npz", "imagefolder", "csv") and not self.path:
            raise ValueError(f"data.source '{self.source}' needs data.path")
        if self.source == "custom" and not self.target:
            raise ValueError("data.source 'custom' needs data.target ('module:callable')")
        if self.channels is not None and self.source not in ("imagefolder", "csv"):
            raise ValueError(f"data.channels is read for ImageFolder and CSV images only, and data.source is {self.source!r} "
                             "(its samples carry their channels); remove data.channels")
        if self.source != "custom" and self.target:
            raise ValueError(f"data.target {self.target!r} is used only with data.source 'custom', and data.source "
                             f"is {self.source!r}: set data.source: custom to read your data, or remove data.target")
        if self.class_names is not None:
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError("data.class_names holds the same name twice")
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise ValueError(f"data.class_names has {len(self.class_names)} names for data.num_classes "
                                 f"{self.num_classes}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction leave under 10 % for training")
        return self


BUILTIN_MODELS = ("simple_cnn", "resnet18", "resnet34", "resnet50", "efficientnet_b0", "unet", "custom")
MODEL_LIBRARIES = ("torchvision", "timm", "smp")


class ModelSection(_Section):
    name: str = Field(
        "simple_cnn", description="simple_cnn, resnet18, resnet34, resnet50, efficientnet_b0, unet (a U-Net for task "
        "segmentation, channels: the encoder's widths, no extra needed), custom (model.target); or a library's "
        "model: 'torchvision:<builder>' (any classifier torchvision.models.list_models() knows), 'timm:<name>' (the "
        "timm extra), 'smp:<Arch>' (segmentation_models_pytorch, the segmentation extra: Unet, UnetPlusPlus, FPN, "
        "DeepLabV3Plus …, with model.kwargs.encoder_name).",
        json_schema_extra={"pattern": r"^(simple_cnn|resnet18|resnet34|resnet50|efficientnet_b0|unet|custom|"
                                      r"(torchvision|timm|smp):.+)$"})
    pretrained: bool = Field(False, description="Start from the library's own pretrained weights (torchvision, timm, "
                             "smp's encoder), read from its local cache only (torch hub, the Hugging Face cache): no "
                             "download at run time. The first convolution is adapted to the data's channels.")
    target: str | None = Field(None, description="custom: 'module:class_or_factory', called with "
                               "num_classes, in_channels and kwargs.")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    in_channels: int | None = Field(None, ge=1, description="Inferred from the data when omitted.")
    channels: list[int] = Field([32, 64, 128, 256], min_length=1, max_length=8,
                                description="simple_cnn: width of each conv block (4–5 blocks).")
    batch_norm: bool = Field(True, description="simple_cnn: BatchNorm after each convolution.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="simple_cnn: before the classifier.")
    init_from: str | None = Field(None, description="Fine-tuning: start from the weights in this file, relative "
                                  "to the project (a wf checkpoint or a plain state dict, read with "
                                  "weights_only=True). Tensors whose name or shape do not fit (a new "
                                  "classifier) keep their fresh initialisation; the run records which.")
    freeze: list[str] = Field(default_factory=list, description="Fine-tuning: parameter-name prefixes to "
                              "freeze (e.g. ['features.0', 'features.1']); they get no gradient and no update.")

    _check_target = field_validator("target")(lambda cls, v: _check_target(v))

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        library, _, builder = v.partition(":")
        if builder or ":" in v:
            if library not in MODEL_LIBRARIES or not builder.strip():
                raise ValueError(f"{v!r}: a library's model is 'torchvision:<builder>', 'timm:<name>' or 'smp:<Arch>'"
                                 + did_you_mean(library, MODEL_LIBRARIES))
            return v
        if v not in BUILTIN_MODELS:
            raise ValueError(f"unknown model {v!r}; wf's own are {', '.join(BUILTIN_MODELS)}, or a library's "
                             "'torchvision:…', 'timm:…', 'smp:…'" + did_you_mean(v, BUILTIN_MODELS))
        return v

    @property
    def library(self) -> str | None:
        """torchvision, timm or smp for a library's model, else None."""
        return self.name.partition(":")[0] if ":" in self.name else None

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every channel width must be at least 1")
        return v

    @model_validator(mode="after")
    def _custom_needs_target(self) -> ModelSection:
        if self.name == "custom" and not self.target:
            raise ValueError("model.name 'custom' needs model.target ('module:class_or_factory')")
        if self.name != "custom" and self.target:  # else the run would train model.name and say nothing
            raise ValueError(f"model.target {self.target!r} is used only with model.name 'custom', and model.name "
                             f"is {self.name!r}: set model.name: custom to train your model, or remove model.target")
        return self

    @property
    def label(self) -> str:
        """The model as reports name it: a custom model by its target (`mymodel:SmallCNN`)."""
        return self.target if self.name == "custom" and self.target else self.name


class SchedulerSection(_Section):
    name: Literal["none", "step", "cosine", "warmup_cosine", "onecycle", "plateau"] = Field(
        "none", description="step, cosine, plateau: stepped once per epoch; warmup_cosine (linear warmup, then "
        "cosine to min_lr) and onecycle: stepped after every optimizer step.")
    step_size: int = Field(10, ge=1, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor.")
    min_lr: float = Field(0.0, ge=0.0, description="cosine, warmup_cosine: final LR; plateau: floor.")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau: decay factor.")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement.")
    warmup_epochs: float = Field(0.0, ge=0.0, description="warmup_cosine: epochs of linear warmup from "
                                 "warmup_start_factor × LR to the LR (fractions allowed).")
    warmup_start_factor: float = Field(0.01, gt=0.0, le=1.0, description="warmup_cosine: the first step's "
                                       "share of the LR.")
    max_lr: float | None = Field(None, gt=0.0, description="onecycle: the peak LR (default: the learning rate, "
                                 "e.g. the one `wf lr-find` suggests).")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: share of the steps spent rising.")
    div_factor: float = Field(25.0, gt=1.0, description="onecycle: the first LR is max_lr / div_factor.")
    final_div_factor: float = Field(1e4, gt=1.0, description="onecycle: the last LR is the first / this.")
    cycle_momentum: bool = Field(True, description="onecycle: cycle momentum (SGD) or beta1 (Adam/AdamW) "
                                 "inversely to the LR, between base_momentum and max_momentum.")
    base_momentum: float = Field(0.85, ge=0.0, lt=1.0, description="onecycle: momentum at the LR's peak.")
    max_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="onecycle: momentum at the LR's ends.")


class LossSection(_Section):
    name: Literal["cross_entropy", "focal", "focal_dice"] = Field(
        "cross_entropy", description="focal: cross-entropy down-weighting easy examples by (1 − p)^gamma "
        "(imbalanced classes); focal_dice (segmentation): focal_weight × focal + dice_weight × soft Dice.")
    focal_gamma: float = Field(2.0, ge=0.0, description="focal: the focusing exponent (0 = cross-entropy).")
    focal_weight: float = Field(0.5, ge=0.0, description="focal_dice: weight of the focal term.")
    dice_weight: float = Field(0.5, ge=0.0, description="focal_dice: weight of the Dice term.")
    class_weights: list[float] | None = Field(None, description="Per-class weights of the cross-entropy/focal "
                                              "term, one per class.")


class EmaSection(_Section):
    enabled: bool = Field(False, description="Keep an exponential moving average of the weights "
                          "(torch.optim.swa_utils.AveragedModel), checkpointed and resumed with the run.")
    decay: float = Field(0.999, gt=0.0, lt=1.0, description="Weight of the average at each update.")
    every_n_steps: int = Field(1, ge=1, description="Update the average after every this many optimizer steps.")
    evaluate: bool = Field(True, description="Validate the averaged weights and let their metric pick the best "
                           "checkpoint; checkpoints then carry them as the model (the raw weights are also "
                           "validated and reported).")


class AugmentationSection(_Section):
    """Training-split augmentation (torchvision transforms v2). Validation and test data are never augmented."""
    random_resized_crop: int | None = Field(None, ge=8, description="Crop a random area and aspect ratio and "
                                            "resize it to this square size (images only).")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="random_resized_crop: the share of the "
                                            "image area the crop covers, low and high.")
    horizontal_flip: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a horizontal flip.")
    vertical_flip: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a vertical flip (overhead "
                                 "imagery has no up).")
    mixup_alpha: float = Field(0.0, ge=0.0, description="MixUp's Beta(α, α); 0 = off.")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="CutMix's Beta(α, α); 0 = off. With both on, each "
                                "batch gets one of the two at random. Segmentation: the pasted box's mask "
                                "comes with it.")
    mix_probability: float = Field(1.0, ge=0.0, le=1.0, description="Share of batches that are mixed.")
    mix_off_last_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Switch mixing off for this last "
                                         "share of the epochs (clean labels to finish, as ImageNet recipes do).")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("needs 0 < low <= high <= 1")
        return v

    @property
    def mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_probability > 0


class TrainingSection(_Section):
    epochs: int = Field(20, ge=1, description="Short training for fast iteration.")
    batch_size: int = Field(32, ge=1, description="Moderate; adjust for GPU memory.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Conservative; works for most models.")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only.")
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    grad_clip_norm: float | None = Field(None, gt=0.0, description="Clip the global gradient norm.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="fp16/bf16: mixed precision with torch.autocast (weights stay fp32).")
    grad_scaler: bool = Field(True, description="fp16 only: scale the loss with torch.amp.GradScaler so that "
                              "small gradients do not underflow; steps whose gradients overflow are skipped.")
    accumulate_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (gradient "
                                  "accumulation): the effective batch is batch_size × this.")
    lr_scaling: Literal["none", "linear"] = Field("none", description="linear: the learning rate used is "
                                                  "learning_rate × effective batch / 256 (Goyal et al.), so "
                                                  "learning_rate is the rate for a batch of 256.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Cross-entropy label smoothing.")
    loss: LossSection = Field(default_factory=LossSection)
    ema: EmaSection = Field(default_factory=EmaSection)
    channels_last: bool = Field(False, description="Channels-last memory format for the model and image "
                                "batches (faster convolutions with AMP on recent GPUs).")
    tf32: bool = Field(False, description="Allow TF32 matmuls and convolutions on Ampere and newer GPUs "
                       "(about 10 bits of mantissa in products; much faster fp32).")
    compile: bool = Field(False, description="torch.compile the model; if compiling fails, training goes on "
                          "eagerly and the run records why.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v


class StageSection(_Section):
    """One stage of a staged curriculum: its settings replace the run's while it lasts."""
    epochs: int = Field(..., ge=1, description="Epochs of this stage.")
    image_size: int | None = Field(None, ge=8, description="Training images resized to this square size "
                                   "(validation stays at full size).")
    batch_size: int | None = Field(None, ge=1, description="Default: training.batch_size.")
    data_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Share of the training split (a fixed random "
                                 "subset; a smaller share is inside every larger one).")
    lr_scale: float = Field(1.0, gt=0.0, description="The learning rate schedule, scaled by this from the "
                            "stage's first step.")
    freeze: list[str] = Field(default_factory=list, description="Parameter-name prefixes frozen in this stage.")
    mixing: bool | None = Field(None, description="MixUp/CutMix on (true) or off (false) in this stage; null: "
                                "as augmentation configures.")


class CurriculumSection(_Section):
    stages: list[StageSection] = Field(default_factory=list, description="Stages in order; their epochs add up "
                                       "to training.epochs. Empty: one stage of the plain settings.")


class EarlyStoppingSection(_Section):
    enabled: bool = True
    patience: int = Field(10, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.001, ge=0.0, description="Smallest change that counts as improvement.")


class CheckpointingSection(_Section):
    save_best: bool = Field(True, description="Best validation metric.")
    keep_best: int = Field(1, ge=1, le=100, description="N > 1: also keep the checkpoints of the N best "
                           "epochs by the validation metric (checkpoints/top/epoch_NNN.pt; one that falls out "
                           "of the N best is deleted; 'save the best N models'). 1: best_model.pt alone.")
    save_last: bool = Field(True, description="For resumption.")
    checkpoint_every_n_epochs: int = Field(5, ge=0, description="Periodic checkpoints; 0 = none.")
    resume_every_n_steps: int = Field(200, ge=0, description="Also write checkpoints/resume.pt every this "
                                      "many steps (and at every epoch's end, with save_last), so that a killed "
                                      "run loses little: `wf phase baseline --resume`. 0 = only on a signal.")


class ValidationSection(_Section):
    validate_every_n_epochs: int = Field(1, ge=1)
    metric: Literal["val_loss", "val_accuracy", "val_f1", "val_mcc", "val_iou"] = Field(
        "val_loss", description="Selects the best checkpoint and drives early stopping. val_accuracy is pixel "
        "accuracy for segmentation; val_f1 the macro F1 of the classes seen (over pixels for segmentation); "
        "val_mcc is Matthews' correlation (over pixels for segmentation); val_iou the "
        "mean intersection over union of the classes (segmentation).")
    target: float | None = Field(None, description="The value of `metric` that makes the baseline "
                                 "acceptable (e.g. 0.95 for val_accuracy); decides the recommended "
                                 "next step.")

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric.endswith("loss") else "max"


class ReproducibilitySection(_Section):
    seed: int = Field(42, ge=0, description="Seeds python, numpy and torch (and every worker).")
    deterministic: bool = Field(True, description="torch deterministic algorithms, no cuDNN autotune.")
    verify_steps: int = Field(3, ge=1, le=100, description="Setup trains this many steps twice and "
                              "compares the weights.")


class MonitoringSection(_Section):
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
                              "pip install 'wf[tensorboard]'.")
    wandb: bool = Field(False, description="Also log each run to Weights & Biases: the resolved config, per-step "
                        "loss, gradient norm and LR per monitoring window, epoch metrics, wf's own GPU figures, and "
                        "the results. Offline (runs/<run>/wandb/, uploaded later with `wandb sync`) unless "
                        "WANDB_MODE says otherwise; a missing key or network never stops a run. Needs "
                        "pip install 'wf[wandb]'.")
    wandb_project: str | None = Field(None, description="The W&B project (default: project.name).")
    mlflow: bool = Field(False, description="Also track each run in MLflow: one MLflow run per wf run (trials, "
                         "comparison runs and final seeds nested under their phase's run), the flattened config as "
                         "params, per-step and per-epoch figures, wf's GPU figures, the report and metrics.json as "
                         "artifacts; finalization registers the verified model, `wf release` sets its alias. Store: "
                         "MLFLOW_TRACKING_URI, else mlflow_uri, else the project's mlflow.db. Never stops a run. "
                         "Needs pip install 'wf[mlflow]'.")
    mlflow_uri: str | None = Field(None, description="The MLflow tracking URI (default: sqlite:///<project>/mlflow.db; "
                                   "MLFLOW_TRACKING_URI wins over it).")
    mlflow_log_checkpoints: bool = Field(False, description="Also log each training run's best checkpoint as an "
                                         "artifact (a local store copies it: twice the disk).")


class SearchParameter(_Section):
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


class OptimizationSection(_Section):
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


class FinalizationSection(_Section):
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
        "with the trained model on a test batch. onnx needs the onnx extra (pip install 'wf[onnx]'), "
        "verified with onnxruntime.")
    export_tolerance: float = Field(1e-4, gt=0.0, description="Largest absolute difference of the logits "
                                    "between the trained model and a reloaded export.")


class WorkflowConfig(_Section):
    """A wf training config. The Phase 2 keys: training, early_stopping, checkpointing, validation."""

    schema_version: Literal[1] = 1
    project: ProjectSection = Field(default_factory=ProjectSection)
    task: Literal["classification", "segmentation"] = Field(
        "classification", description="classification: one label per sample; segmentation: a mask of class ids "
        "per sample (npz or custom data, data.num_classes required).")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    augmentation: AugmentationSection = Field(default_factory=AugmentationSection)
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    checkpointing: CheckpointingSection = Field(default_factory=CheckpointingSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    reproducibility: ReproducibilitySection = Field(default_factory=ReproducibilitySection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    optimization: OptimizationSection = Field(default_factory=OptimizationSection)
    finalization: FinalizationSection = Field(default_factory=FinalizationSection)

    @model_validator(mode="after")
    def _task_fits(self) -> WorkflowConfig:
        segmentation = self.task == "segmentation"
        library = self.model.library
        if library == "smp" and not segmentation:
            raise ValueError(f"model.name {self.model.name!r}: segmentation_models_pytorch's models give per-pixel "
                             "logits, for task: segmentation; a classifier is 'timm:…' or 'torchvision:…'")
        if library in ("timm", "torchvision") and segmentation:
            raise ValueError(f"model.name {self.model.name!r} is a classifier; task segmentation needs per-pixel "
                             "logits: 'smp:Unet' (model.kwargs.encoder_name: resnet34 …) or unet")
        if segmentation:
            if self.data.source not in ("npz", "csv", "custom"):
                raise ValueError(f"task segmentation: data.source '{self.data.source}' has no masks; use npz (with "
                                 "data.mask_key), csv (with a mask column) or custom")
            if self.data.num_classes is None:
                raise ValueError("task segmentation needs data.num_classes (masks are not scanned to count them)")
            if self.augmentation.mixup_alpha > 0:
                raise ValueError("task segmentation: MixUp blends labels into class probabilities, which a mask of "
                                 "class ids cannot hold; set augmentation.mixup_alpha to 0 (CutMix, "
                                 "augmentation.cutmix_alpha, pastes a box of another tile with its mask)")
            if self.data.sampling == "class_balanced":
                raise ValueError("data.sampling class_balanced is for classification; segmentation has "
                                 "pixel_balanced")
        else:
            if self.training.loss.name == "focal_dice":
                raise ValueError("training.loss.name focal_dice needs task: segmentation (Dice is over pixels)")
            if self.data.sampling == "pixel_balanced":
                raise ValueError("data.sampling pixel_balanced needs task: segmentation")
            if self.validation.metric == "val_iou":
                raise ValueError("validation.metric val_iou needs task: segmentation")
        weights = self.training.loss.class_weights
        if weights is not None and self.data.num_classes is not None and len(weights) != self.data.num_classes:
            raise ValueError(f"training.loss.class_weights has {len(weights)} weights for "
                             f"{self.data.num_classes} classes (data.num_classes)")
        return self

    @model_validator(mode="after")
    def _curriculum_fits(self) -> WorkflowConfig:
        stages = self.curriculum.stages
        if stages and sum(s.epochs for s in stages) != self.training.epochs:
            raise ValueError(f"curriculum.stages: the stages' epochs add up to {sum(s.epochs for s in stages)}, and "
                             f"training.epochs is {self.training.epochs}; make them equal")
        for i, stage in enumerate(stages, 1):
            if stage.mixing and not self.augmentation.mixing:
                raise ValueError(f"curriculum.stages[{i}]: mixing is on, and augmentation has neither mixup_alpha "
                                 "nor cutmix_alpha")
        return self

    @model_validator(mode="after")
    def _search_space_keys(self) -> WorkflowConfig:
        """Every search-space key must name a setting of this config (and not the search itself)."""
        for key in self.optimization.search_space:
            node: Any = self
            parts = key.split(".")
            for i, part in enumerate(parts):
                fields = type(node).model_fields if isinstance(node, BaseModel) else {}
                if part not in fields or parts[0] in ("optimization", "schema_version"):
                    raise ValueError(f"optimization.search_space: {key!r} is not a config setting "
                                     f"({'.'.join(parts[:i + 1])} does not exist)")
                node = getattr(node, part)
            if isinstance(node, BaseModel):
                raise ValueError(f"optimization.search_space: {key!r} is a section, not a setting")
        return self


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw['training']['scheduler']['name'] = value for 'training.scheduler.name', making sections."""
    *path, key = dotted.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[key] = value


def fit_stages(stages: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """A curriculum's stages for a run of `epochs` epochs (a trial, a final run, a smoke test):
    each stage keeps its share of the epochs, at least one; with fewer epochs than stages, the last
    stages (full size, full data) are the ones kept, one epoch each."""
    if not stages or sum(s["epochs"] for s in stages) == epochs:
        return stages
    if epochs < len(stages):
        return [dict(s, epochs=1) for s in stages[-epochs:]]
    total = sum(s["epochs"] for s in stages)
    shares = [s["epochs"] * epochs / total for s in stages]
    counts = [max(1, int(x)) for x in shares]
    order = sorted(range(len(stages)), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    i = 0
    while sum(counts) != epochs:  # hand out (or take back) single epochs, largest remainder first
        j = order[i % len(order)]
        if sum(counts) < epochs:
            counts[j] += 1
        elif counts[j] > 1:
            counts[j] -= 1
        i += 1
    return [dict(s, epochs=n) for s, n in zip(stages, counts)]


def with_changes(cfg: WorkflowConfig, changes: dict[str, Any]) -> WorkflowConfig:
    """A validated copy of `cfg` with dotted keys (`training.learning_rate`, `training.scheduler.name`) set.
    A new training.epochs rescales a curriculum's stages to it (fit_stages). A combination that does
    not validate is a ConfigError naming the changes."""
    raw = cfg.model_dump(mode="json")
    for dotted, value in changes.items():
        set_dotted(raw, dotted, value)
    if "training.epochs" in changes and "curriculum.stages" not in changes:
        raw["curriculum"]["stages"] = fit_stages(raw["curriculum"]["stages"], raw["training"]["epochs"])
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"the config with {shown}", problems) from None
