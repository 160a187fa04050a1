"""What a training run records about itself in `logs/metrics.json`, as typed, torch-free models.

The trainer writes the file through `RunMetrics` (a key it does not declare, or a value of the wrong
type, fails at the write, in the tests, not in a report months later) and every reader loads it
through `load_run_metrics`, so that a file edited by hand or truncated is one clear error naming the
file and the field. JSON has no NaN: a non-finite loss is recorded as its string ("nan", "inf").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mlflow_core.errors import UserInputError
from mlflow_core.workflow import jsontext

METRICS_SCHEMA_VERSION = 1
RunStatus = Literal["running", "completed", "early_stopped", "pruned", "failed_nan", "interrupted", "crashed"]
FloatOrStr = float | str  # a finite value, or the string of a non-finite one


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class DataFacts(_Record):
    source: str
    train_size: int
    val_size: int
    num_classes: int
    input_shape: list[int]
    normalization: dict[str, Any] | None = None
    class_names: list[str] | None = None


class EpochRecord(BaseModel):
    """One epoch: training figures always, validation figures on validated epochs (`val_*`; with EMA
    also `raw_val_*` and `ema_val_*`; for segmentation `val_iou` and per class), and what the recipes
    add (`stage`, `mixed`). Extra validation figures are kept as they come."""
    model_config = ConfigDict(extra="allow")
    epoch: int
    train_loss: FloatOrStr
    train_accuracy: float
    lr: float
    duration_s: float
    samples_per_s: float | None = None
    data_wait_fraction: float | None = None
    data_wait_fraction_by_rank: list[float] | None = None
    stage: int | None = None
    val_loss: FloatOrStr | None = None
    val_accuracy: float | None = None
    improved: bool | None = None
    weights: EpochWeights | None = None


class BestValue(_Record):
    metric: str
    value: float
    epoch: int


class ChanceLevel(_Record):
    """What a predictor that learned nothing scores on the validation split (noise.chance_level):
    the yardstick of the claim that a model learned."""
    units: Literal["samples", "pixels"]
    count: int
    majority_class: int
    majority_share: float
    prior_nll: float


class EpochWeights(_Record):
    """The weights an epoch ended with: the global step and their digest (training/checkpoint.py
    weights_sha256), and the evaluated EMA weights' digest where validation judged those."""
    step: int
    sha256: str
    evaluated_sha256: str | None = None


class CheckpointRef(_Record):
    """A checkpoint as the run names it: its path inside the run directory, when it was written, and
    its digest (what evidence and `wf runs select` verify)."""
    path: str
    epoch: int
    step: int
    bytes: int | None = None
    sha256: str
    value: float | None = None  # checkpoints/top/: the validation metric it was kept for
    world_size: int | None = None  # resume.pt: the processes that must continue it


class Checkpoints(_Record):
    best: CheckpointRef | None = None
    last: CheckpointRef | None = None
    periodic: list[CheckpointRef] = []
    top: list[CheckpointRef] = []


class NonFiniteEvent(_Record):
    """The first non-finite loss or gradient norm, with the steps before it and the dump to replay."""
    step: int
    epoch: int
    batch_in_epoch: int
    what: Literal["loss", "gradient norm"]
    value: str
    loss: FloatOrStr
    grad_norm: FloatOrStr
    lr: float
    message: str
    recent_losses: list[tuple[int, FloatOrStr]]
    recent_grad_norms: list[tuple[int, FloatOrStr]]
    dump: str | None = None


class Anomaly(_Record):
    kind: str  # stalled, exploding, precision_fallback, compile_fallback
    step: int | None
    epoch: int | None
    message: str


class StageRecord(_Record):
    stage: int
    epochs: tuple[int, int]
    image_size: int | None
    batch_size: int
    data_fraction: float
    lr_scale: float
    freeze: list[str]
    mixing: bool | None
    steps_per_epoch: int
    samples: int
    frozen_tensors: int
    learning_rate: float


class Architecture(_Record):
    activations: dict[str, int]
    normalization: dict[str, int]
    weight_layers: int


class LayerRecord(_Record):
    epoch: int
    step: int
    grad_norm: list[FloatOrStr]
    weight_norm: list[FloatOrStr]


class Layers(_Record):
    """Per-layer gradient and weight norms, twice an epoch at most: the vanishing-gradient evidence."""
    names: list[str]
    numel: list[int]
    records: list[LayerRecord]


class PrecisionRecord(_Record):
    mode: str
    requested: str
    cpu_native: bool | None
    cpu_slowdown: float | None
    note: str | None
    grad_scaler: bool
    skipped_steps: int
    final_scale: float | None


class RunMetrics(_Record):
    schema_version: int = METRICS_SCHEMA_VERSION
    run_id: str
    phase: str
    status: RunStatus
    device: str
    torch: str
    model: str
    parameters: int
    data: DataFacts
    seed: int
    seeded: list[str]
    deterministic: bool
    metric: str
    mode: Literal["min", "max"]
    target: float | None
    epochs_planned: int
    batch_size: int
    num_workers: int
    epochs: list[EpochRecord]
    best: BestValue | None
    nonfinite: NonFiniteEvent | None
    checkpoints: Checkpoints
    steps: int
    architecture: Architecture
    recipe: dict[str, Any]
    stages: list[StageRecord]
    layers: Layers
    config: dict[str, Any]  # the resolved training config (mlflow_core.config.schema.WorkflowConfig)
    duration_s: float | None = None
    resume: CheckpointRef | None = None  # where an interrupted run continues
    gpu_by_node: list[dict[str, Any]] | None = None
    gpu: dict[str, Any] | None = None  # the NVML sampler's summary (monitoring/nvml.py)
    stop_reason: str | None = None
    anomalies: list[Anomaly] | None = None
    precision: PrecisionRecord | None = None
    chance: ChanceLevel | None = None  # the validation split's trivial predictor (from the first validation)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def validated_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` as RunMetrics writes it: checked against the schema, in JSON form."""
    return RunMetrics.model_validate(metrics).to_json()


def first_problem(exc: ValidationError, within: str = "") -> str:
    """The first problem of a record that does not validate, as `field a.b: message` (`within`: the
    path of the record in its file, e.g. "facts")."""
    first = exc.errors()[0]
    where = ".".join([within, *(str(p) for p in first["loc"])] if within else [str(p) for p in first["loc"]])
    return f"field {where or '(top level)'}: {first['msg']}"


def load_run_metrics(path: Path) -> RunMetrics:
    """A run's metrics.json; a file that is not one is exit 2 naming the file and the field."""
    try:
        raw = jsontext.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot be read ({exc}).") from None
    try:
        return RunMetrics.model_validate(raw)
    except ValidationError as exc:
        phase = raw.get("phase") if isinstance(raw, dict) else None
        again = f"`wf phase {phase}`" if isinstance(phase, str) and phase.isidentifier() else "the phase"
        raise UserInputError(f"{path}: {first_problem(exc)} (the trainer writes this file; was it edited?)",
                             hint=f"Run {again} again to write it anew.") from None
