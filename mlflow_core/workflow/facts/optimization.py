"""Phase 4, optimization: the LR range test, the study, the best trial and the comparison over
seeds."""

from __future__ import annotations

from typing import Any, Literal

from mlflow_core.workflow.facts.base import Facts, FileRef, PhaseFacts
from mlflow_core.workflow.facts.training import RunProof


class LrRangeTest(Facts):
    lrs: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    rule: str
    stop_reason: str
    min_loss_lr: float | None


class PruningFacts(Facts):
    warmup_epochs: int
    startup_trials: int
    min_delta: float | None
    rule: str  # the rule in a sentence, as the sweep applied it
    pruned_after_epoch: dict[str, int]  # epoch → trials pruned after it


class StudyFacts(Facts):
    name: str
    storage: str
    n_trials: int
    sampler: str
    pruner: str
    trial_epochs: int
    pruning: PruningFacts | None = None  # the median pruner's rule and what it pruned
    counts: dict[str, int]
    search_space: dict[str, dict[str, Any]]


class TrialRow(Facts):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    status: str | None
    epochs: int | None
    duration_s: float | None
    run_dir: str | None
    intermediate: dict[str, float]


class BestTrial(Facts):
    trial: int
    value: float
    params: dict[str, Any]
    run_dir: str | None = None
    proof: RunProof | None = None  # what `wf verify` recomputes its value from (its run is on this machine)


class ComparedRun(Facts):
    """One run of the comparison over seeds, and what `wf verify` recomputes its best value from."""
    label: Literal["baseline", "optimized"]
    seed: int
    run_dir: str
    value: float | None
    proof: RunProof | None = None
    reused: str | None = None  # the recorded baseline run that stands for this one (same computation)


class Comparison(Facts):
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
    runs: list[ComparedRun] | None = None


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
