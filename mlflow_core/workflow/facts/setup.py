"""Phase 1, setup: the environment, seeds, data, model, reproducibility and throughput checks."""

from __future__ import annotations

from typing import Any, Literal

from mlflow_core.workflow.facts.base import Facts, FileRef, PhaseFacts
from mlflow_core.workflow.records import (
    PrecisionRecord,
)


class EnvironmentFacts(Facts):
    report: FileRef | None  # None in a smoke run, which writes nothing into the project
    summary: str


class SeedFacts(Facts):
    seed: int
    deterministic: bool
    seeded: list[str]


class DataCheck(Facts):
    """The data pipeline as setup scanned it (training/data_checks.py)."""
    source: str
    train_size: int
    val_size: int
    test_size: int
    input_shape: list[int]
    batch_shape: list[int]
    input_dtype: str
    label_dtype: str
    num_classes: int
    input_min: float
    input_max: float
    class_counts_train: dict[str, int]
    class_counts_val: dict[str, int]
    imbalance_ratio: float | None
    overlap_train_val: int
    overlaps: dict[str, int]
    class_names: list[str] | None
    scanned: dict[str, int]
    problems: list[str]
    warnings: list[str]
    digests: dict[str, Any] | None = None  # custom data: a fixed sample of items stands for the content
    # file sources: every file of every split compared by sha256 (pair → files of the second split that
    # repeat one of the first); None where the data is not files (digits, custom)
    file_overlaps: dict[str, int] | None = None

    def overlap_coverage(self) -> str:
        """What the check for a sample in two splits compared: every file by content, and the decoded
        samples (all, or the share scanned)."""
        sizes = {"train": self.train_size, "val": self.val_size}
        sampled = [f"{self.scanned.get(k, 0):,} of {n:,} {k}" for k, n in sizes.items() if self.scanned.get(k, 0) < n]
        samples = (f"decoded samples compared in a sample ({', '.join(sampled)})" if sampled
                   else "every decoded sample compared")
        files = "every file compared by sha256; " if self.file_overlaps is not None else ""
        return files + samples


class ModelCheck(Facts):
    ok: bool
    name: str
    parameters: int | None = None
    trainable: int | None = None
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    device: str | None = None
    error: str | None = None
    weights: dict[str, Any] | None = None  # where the starting weights came from: pretrained and init_from


class ReproducibilityCheck(Facts):
    steps: int
    device: str
    identical: bool
    max_abs_diff: float
    passed: bool
    precision: PrecisionRecord
    weights_sha256: str | None = None  # the short run's end weights (what `wf verify setup` trains again)


class ThroughputCheck(Facts):
    """The loader alone against the model alone, in samples/s, at setup."""
    device: str
    batch_size: int
    loader: dict[str, float]  # path → samples/s
    path: Literal["packed", "files", "memory", "custom"]  # the path the run reads
    model: float
    bound: Literal["data", "model"]
    advice: str


class SetupFacts(PhaseFacts):
    config_sha256: str
    config_valid: bool
    environment: EnvironmentFacts
    seeds: SeedFacts
    data: DataCheck
    data_pack: dict[str, dict[str, Any]] | None = None  # split → its pack (workflow/packs.py), when packed
    model: ModelCheck
    reproducibility: ReproducibilityCheck
    throughput: ThroughputCheck | None = None
