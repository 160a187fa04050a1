"""The config's inputs: the project, its data (`data`) and the model it trains (`model`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlflow_core.config.section import Section, check_target
from mlflow_core.errors import did_you_mean


class ProjectSection(Section):
    name: str = Field("wf-project", min_length=1, description="Shown in reports.")


class DataSection(Section):
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

    _check_target = field_validator("target")(lambda cls, v: check_target(v))

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


class ModelSection(Section):
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

    _check_target = field_validator("target")(lambda cls, v: check_target(v))

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
