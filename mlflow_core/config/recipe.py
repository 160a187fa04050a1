"""How a run trains: `training` (optimizer, scheduler, loss, EMA), `augmentation`, `curriculum`,
`early_stopping`, `checkpointing`, `validation` and `reproducibility`: the Phase 2 keys first."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from mlflow_core.config.section import Section


class SchedulerSection(Section):
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


class LossSection(Section):
    name: Literal["cross_entropy", "focal", "focal_dice"] = Field(
        "cross_entropy", description="focal: cross-entropy down-weighting easy examples by (1 − p)^gamma "
        "(imbalanced classes); focal_dice (segmentation): focal_weight × focal + dice_weight × soft Dice.")
    focal_gamma: float = Field(2.0, ge=0.0, description="focal: the focusing exponent (0 = cross-entropy).")
    focal_weight: float = Field(0.5, ge=0.0, description="focal_dice: weight of the focal term.")
    dice_weight: float = Field(0.5, ge=0.0, description="focal_dice: weight of the Dice term.")
    class_weights: list[float] | None = Field(None, description="Per-class weights of the cross-entropy/focal "
                                              "term, one per class.")


class EmaSection(Section):
    enabled: bool = Field(False, description="Keep an exponential moving average of the weights "
                          "(torch.optim.swa_utils.AveragedModel), checkpointed and resumed with the run.")
    decay: float = Field(0.999, gt=0.0, lt=1.0, description="Weight of the average at each update.")
    every_n_steps: int = Field(1, ge=1, description="Update the average after every this many optimizer steps.")
    evaluate: bool = Field(True, description="Validate the averaged weights and let their metric pick the best "
                           "checkpoint; checkpoints then carry them as the model (the raw weights are also "
                           "validated and reported).")


class AugmentationSection(Section):
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


class TrainingSection(Section):
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


class StageSection(Section):
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


class CurriculumSection(Section):
    stages: list[StageSection] = Field(default_factory=list, description="Stages in order; their epochs add up "
                                       "to training.epochs. Empty: one stage of the plain settings.")


class EarlyStoppingSection(Section):
    enabled: bool = True
    patience: int = Field(10, ge=1, description="Validations without improvement before stopping.")
    min_delta: float = Field(0.001, ge=0.0, description="Smallest change that counts as improvement.")


class CheckpointingSection(Section):
    save_best: bool = Field(True, description="Best validation metric.")
    keep_best: int = Field(1, ge=1, le=100, description="N > 1: also keep the checkpoints of the N best "
                           "epochs by the validation metric (checkpoints/top/epoch_NNN.pt; one that falls out "
                           "of the N best is deleted; 'save the best N models'). 1: best_model.pt alone.")
    save_last: bool = Field(True, description="For resumption.")
    checkpoint_every_n_epochs: int = Field(5, ge=0, description="Periodic checkpoints; 0 = none.")
    resume_every_n_steps: int = Field(200, ge=0, description="Also write checkpoints/resume.pt every this "
                                      "many steps (and at every epoch's end, with save_last), so that a killed "
                                      "run loses little: `wf phase baseline --resume`. 0 = only on a signal.")
    replay_every_n_epochs: int = Field(1, ge=0, description="Keep the full training state (weights, optimizer, "
                                       "RNG, position) at the start of every Nth epoch in checkpoints/replay/, "
                                       "so that `wf verify` can re-train a segment chosen at verification time and "
                                       "compare its end weights with the recorded digest. Each state is about "
                                       "the size of resume.pt (weights plus optimizer state: 2-3x the weights "
                                       "for Adam). 0 = keep none: the run's training claims are then unverifiable.")


class ValidationSection(Section):
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


class ReproducibilitySection(Section):
    seed: int = Field(42, ge=0, description="Seeds python, numpy and torch (and every worker).")
    deterministic: bool = Field(True, description="torch deterministic algorithms, no cuDNN autotune.")
    verify_steps: int = Field(3, ge=1, le=100, description="Setup trains this many steps twice and "
                              "compares the weights.")
