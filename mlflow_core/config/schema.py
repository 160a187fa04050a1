"""The training config schema (`training_config.yaml`): `WorkflowConfig`, its sections (inputs.py:
project, data, model; recipe.py: how a run trains, the Phase 2 keys first; phase_settings.py:
monitoring, optimization, finalization) and the rules that span sections.

Every model forbids unknown keys so that a misspelling is an error, not a silently ignored setting.
Defaults are the conservative choices of a first baseline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from mlflow_core.config.inputs import (
    DataSection,
    ModelSection,
    ProjectSection,
)
from mlflow_core.config.phase_settings import (
    FinalizationSection,
    MonitoringSection,
    OptimizationSection,
)
from mlflow_core.config.recipe import (
    AugmentationSection,
    CheckpointingSection,
    CurriculumSection,
    EarlyStoppingSection,
    ReproducibilitySection,
    TrainingSection,
    ValidationSection,
)
from mlflow_core.config.section import Section
from mlflow_core.errors import ConfigError


class WorkflowConfig(Section):
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
