"""What each phase records as evidence, as typed, torch-free models.

A runner builds its phase's facts model (a key it does not declare, or a value of the wrong type,
fails where it is written, in the tests); `evidence.read_evidence` validates the committed file into
the same model, so that checks, gates and reports read attributes, and a file from another wf
version is one clear message naming the field. Report templates get the JSON form (`to_json`): a
project's own copies of the templates read the same keys the committed evidence shows.

Reused from the run records (records.py): the best value, checkpoints, the non-finite event,
anomalies and the precision record, as the trainer wrote them to metrics.json.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mlflow_core.workflow.records import (
    Anomaly,
    BestValue,
    Checkpoints,
    NonFiniteEvent,
    PrecisionRecord,
    RunStatus,
)


class _Facts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRef(_Facts):
    """A file wf wrote (a report, a config, a log), named by its path in the project and its digest:
    what a check verifies to see that nobody edited it."""
    path: str
    sha256: str


class Fingerprints(_Facts):
    """What the gate vouches for (fingerprints.py compares them): the config, the data, the code and
    the packages as the phase ran, and the configs it approves besides its own."""
    config: dict[str, Any]
    data: dict[str, Any] | None
    code: dict[str, Any]
    packages: dict[str, Any]
    approves: list[dict[str, Any]] = []

    def approved_configs(self) -> list[dict[str, Any]]:
        return [c for c in [self.config, *self.approves] if c]


class PhaseFacts(_Facts):
    """What every phase's evidence carries besides its own facts: written by the engine."""
    fingerprints: Fingerprints | None = None
    report: FileRef | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with the keys the runner set (an absent key stays absent: templates test
        `is defined`)."""
        return self.model_dump(mode="json", exclude_unset=True)


# --- setup ------------------------------------------------------------------------------------------

class EnvironmentFacts(_Facts):
    report: FileRef | None  # None in a smoke run, which writes nothing into the project
    summary: str


class SeedFacts(_Facts):
    seed: int
    deterministic: bool
    seeded: list[str]


class DataCheck(_Facts):
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


class ModelCheck(_Facts):
    ok: bool
    name: str
    parameters: int | None = None
    trainable: int | None = None
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    device: str | None = None
    error: str | None = None
    weights: dict[str, Any] | None = None  # where the starting weights came from: pretrained and init_from


class ReproducibilityCheck(_Facts):
    steps: int
    device: str
    identical: bool
    max_abs_diff: float
    passed: bool
    precision: PrecisionRecord


class ThroughputCheck(_Facts):
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



# --- baseline: a training run -----------------------------------------------------------------------

class GpuSummary(BaseModel):
    """The NVML sampler's summary (monitoring/nvml.py): `available` and why not, or the utilization
    percentiles and memory it measured (extra figures are kept as they come)."""
    model_config = ConfigDict(extra="allow")
    available: bool
    reason: str | None = None
    p50: float | None = None
    mean: float | None = None


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


# --- diagnostics ------------------------------------------------------------------------------------

class FindingRecord(_Facts):
    diagnostic: str
    cause: str
    confidence: float
    evidence: dict[str, Any]
    fix: str
    explanation: str = ""
    strength: float | None = None  # the effect in units of its sampling noise; None: observed directly


class DiagnosisRecord(_Facts):
    """A diagnosis in its JSON form (diagnostics/base.py: Diagnosis.to_json). Probes and trials are
    each diagnostic's own figures, shown by its report section."""
    diagnostic: str
    run: str
    findings: list[FindingRecord]
    probes: dict[str, Any]
    trials: list[dict[str, Any]]
    suggested_config: str | None
    report: str | None
    sensitivity: dict[str, str] = {}  # diagnostic → the smallest effect it can see in this run's data


ROOT_CAUSE_CONFIDENCE = 0.7  # the top finding must be at least this likely to count as the root cause
DiagnosisOutcome = Literal["cause_found", "nothing_to_fix", "unexplained"]


class DiagnosticsFacts(PhaseFacts):
    diagnosed_run: str
    diagnosis: DiagnosisRecord
    verified_fix: str | None
    suggested_config: str | None
    # what the diagnosis concluded: a cause (top finding likely enough), nothing to fix (the run met
    # its success criteria and no diagnostic fired), or neither; None in evidence of an earlier wf
    outcome: DiagnosisOutcome | None = None
    diagnosed_run_passed: bool | None = None

    def top_finding(self) -> FindingRecord | None:
        return self.diagnosis.findings[0] if self.diagnosis.findings else None

    def concluded(self) -> DiagnosisOutcome:
        if self.outcome is not None:
            return self.outcome
        return judge_diagnosis(self.top_finding(), self.diagnosed_run_passed)


def judge_diagnosis(top: FindingRecord | None, run_passed: bool | None) -> DiagnosisOutcome:
    if top is not None and top.confidence >= ROOT_CAUSE_CONFIDENCE:
        return "cause_found"
    if top is None and run_passed:
        return "nothing_to_fix"
    return "unexplained"


# --- optimization -----------------------------------------------------------------------------------

class LrRangeTest(_Facts):
    lrs: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    rule: str
    stop_reason: str
    min_loss_lr: float | None


class PruningFacts(_Facts):
    warmup_epochs: int
    startup_trials: int
    min_delta: float | None
    rule: str  # the rule in a sentence, as the sweep applied it
    pruned_after_epoch: dict[str, int]  # epoch → trials pruned after it


class StudyFacts(_Facts):
    name: str
    storage: str
    n_trials: int
    sampler: str
    pruner: str
    trial_epochs: int
    pruning: PruningFacts | None = None  # the median pruner's rule and what it pruned
    counts: dict[str, int]
    search_space: dict[str, dict[str, Any]]


class TrialRow(_Facts):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    status: str | None
    epochs: int | None
    duration_s: float | None
    run_dir: str | None
    intermediate: dict[str, float]


class BestTrial(_Facts):
    trial: int
    value: float
    params: dict[str, Any]


class Comparison(_Facts):
    """The baseline config and the best trial's over the same seeds, and the one-sided Welch t-test."""
    metric: str
    seeds: list[int]
    baseline: list[float]
    optimized: list[float]
    alpha: float
    test: str
    significant: bool
    p_value: float | None
    verdict: str
    baseline_mean: float | None = None
    baseline_std: float | None = None
    optimized_mean: float | None = None
    optimized_std: float | None = None
    improvement: float | None = None


class OptimizationFacts(PhaseFacts):
    run_dir: str
    metric: str
    direction: Literal["maximize", "minimize"]
    lr_range_test: LrRangeTest | None = None
    study: StudyFacts
    trials: list[TrialRow]
    best: BestTrial | None = None
    importance: dict[str, float] | None = None
    comparison: Comparison | None = None
    optimized_config: FileRef | None = None

    def concluded(self) -> Literal["improved", "no_improvement"] | None:
        """What the sweep concluded against the baseline over seeds; None without a comparison."""
        if self.comparison is None:
            return None
        return "improved" if self.comparison.significant else "no_improvement"


# --- finalization -----------------------------------------------------------------------------------

class MemberRun(_Facts):
    """One final training run (a seed, or a fold and a seed) and its test scores."""
    seed: int
    fold: int | None = None
    status: str
    stop_reason: str | None = None
    run_dir: str | None = None
    val_best: BestValue | None = None
    test: dict[str, Any] | None = None  # classification or segmentation scores, per class too
    test_without_tta: dict[str, Any] | None = None


class TestSplit(_Facts):
    samples: int
    source: str
    evaluated_before_by: list[str | None]


class FinalData(_Facts):
    train: int
    val: int
    test: int
    num_classes: int
    input_shape: list[int]
    normalization: dict[str, Any] | None
    class_names: list[str] | None


class Spread(_Facts):
    """A test figure over the final models: mean ± std and each value."""
    mean: float
    std: float
    values: list[float]


class ExportRecord(_Facts):
    kind: str
    verified: bool
    detail: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    max_abs_diff: float | None = None


class BundleRef(FileRef):
    files: int


class RegisteredModel(_Facts):
    """The verified export as a version of the project's model in MLflow's registry."""
    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    run_id: str  # the finalization's MLflow run, which holds the model's files
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
    exports: list[ExportRecord] = []
    bundle: BundleRef | None = None
    registered: RegisteredModel | None = None  # monitoring.mlflow: the model's version in the registry

    def evaluated(self) -> list[MemberRun]:
        return [r for r in self.seeds if r.test is not None]
