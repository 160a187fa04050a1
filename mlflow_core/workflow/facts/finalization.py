"""Phase 5, finalization: the members evaluated on the test split, the exports, the bundle and
the registered model."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mlflow_core.workflow.facts.base import Facts, FileRef, PhaseFacts
from mlflow_core.workflow.facts.training import RunProof
from mlflow_core.workflow.records import (
    BestValue,
)


class MemberRun(Facts):
    """One final training run (a seed, or a fold and a seed) and its test scores."""
    seed: int
    fold: int | None = None
    status: str
    stop_reason: str | None = None
    run_dir: str | None = None
    val_best: BestValue | None = None
    test: dict[str, Any] | None = None  # classification or segmentation scores, per class too
    test_without_tta: dict[str, Any] | None = None
    proof: RunProof | None = None  # what `wf verify` recomputes the member's training and test figures from


class TestSplit(Facts):
    samples: int
    source: str
    evaluated_before_by: list[str | None]


class FinalData(Facts):
    train: int
    val: int
    test: int
    num_classes: int
    input_shape: list[int]
    normalization: dict[str, Any] | None
    class_names: list[str] | None


class Spread(Facts):
    """A test figure over the final models: mean ± std and each value."""
    mean: float
    std: float
    values: list[float]


class ExportRecord(Facts):
    kind: str
    verified: bool
    detail: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    max_abs_diff: float | None = None


class BundleRef(FileRef):
    files: int


class RegisteredModel(Facts):
    """The verified export as a version of the project's model in MLflow's registry."""
    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    run_id: str  # the finalization's MLflow run, which made the logged model
    model_id: str | None = None  # the MLflow logged model (m-…) that holds the model's files
    tracking_uri: str
    max_abs_diff: float | None = None  # the registered model, loaded back by MLflow, against the trained one


class FinalizationFacts(PhaseFacts):
    run_dir: str
    epochs: int
    seeds: list[MemberRun]
    config_sha256: str
    config: dict[str, Any]  # the resolved config the final runs trained (WorkflowConfig's JSON form)
    test_split: TestSplit
    data: FinalData
    optimized_config_matches: bool | None
    summary: dict[str, Spread] | None = None
    tta: dict[str, Any] | None = None
    crossval: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None
    exported_seed: int | None = None
    exports: list[ExportRecord] = Field(default_factory=list)
    bundle: BundleRef | None = None
    registered: RegisteredModel | None = None  # monitoring.mlflow: the model's version in the registry

    def evaluated(self) -> list[MemberRun]:
        return [r for r in self.seeds if r.test is not None]
