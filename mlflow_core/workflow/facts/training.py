"""Phase 2, baseline: what a training run records (also each trial and final run's summary)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from mlflow_core.workflow.facts.base import Facts, FileRef, PhaseFacts
from mlflow_core.workflow.records import (
    Anomaly,
    BestValue,
    ChanceLevel,
    CheckpointRef,
    Checkpoints,
    EpochWeights,
    FloatOrStr,
    NonFiniteEvent,
    RunStatus,
)


class GpuSummary(BaseModel):
    """The NVML sampler's summary (monitoring/nvml.py): `available` and why not, or the utilization
    percentiles and memory it measured (extra figures are kept as they come)."""
    model_config = ConfigDict(extra="allow")
    available: bool
    reason: str | None = None
    p50: float | None = None
    mean: float | None = None


class ReplayRecord(Facts):
    """The training states the run kept for `wf verify` (training/callbacks/replay.py): the epochs
    whose start state is in `<run_dir>/checkpoints/replay/epoch_NNN.pt`."""
    every_n_epochs: int
    epochs: list[int]


class RunProof(Facts):
    """What `wf verify` recomputes one training run from, for runs recorded inside another phase's
    facts (finalization's members): its best checkpoint, every epoch's weights digest, its kept
    states. The baseline's TrainingFacts carry the same as fields of their own."""
    best: CheckpointRef | None
    weights: dict[int, EpochWeights] | None
    replay: ReplayRecord | None


class TrainingFacts(PhaseFacts):
    run_dir: str
    device: str
    status: RunStatus
    stop_reason: str | None
    epochs_completed: int
    steps: int
    duration_s: float | None
    first_epoch_train_loss: float | None
    best_train_loss: float | None
    best: BestValue | None
    target: float | None
    nonfinite: NonFiniteEvent | None
    anomalies: list[Anomaly] | None
    checkpoints: Checkpoints  # their paths relative to the project, not to the run directory
    gpu: GpuSummary | None
    data_wait_fraction: float | None
    metrics: FileRef
    # what `wf verify` recomputes, and what the claim that the model learned is judged against
    best_validation: dict[str, FloatOrStr] | None = None  # the best epoch's validation figures (val_*)
    chance: ChanceLevel | None = None
    weights: dict[int, EpochWeights] | None = None  # epoch → the weights it ended with
    replay: ReplayRecord | None = None
