"""When a sweep may stop a trial early, and why.

A trial is pruned only on evidence: after a warm-up that is a share of its epochs, once enough trials
have completed to form a median, and only when its best value so far is worse than that median by
more than the validation set's sampling noise. A tie, or a difference of a sample or two on a small
validation set, is not "worse": pruning on it explores nothing (the sweep then keeps its first lucky
draws) and stops trials that would have ended level with the best.

The noise of an accuracy-like metric measured on `n` validation samples near a value `m` is the
standard error of a difference of two such measurements, sqrt(2·m·(1−m)/n), and never less than one
sample (1/n). F1 and IoU are treated as proportions of the same samples (an approximation), MCC on
its [−1, 1] scale; a loss has no such formula, so without `optimization.pruner_min_delta` a loss is
pruned only when strictly worse.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from mlflow_core.config.phase_settings import OptimizationSection

PROPORTION_METRICS = {"val_accuracy": 1.0, "val_f1": 1.0, "val_iou": 1.0, "val_mcc": 2.0}  # metric → its range


@dataclass(frozen=True)
class PruningRule:
    warmup_epochs: int  # a trial may be pruned at the end of this epoch, not before
    startup_trials: int  # completed trials needed before any pruning
    min_delta: float | None  # configured margin; None: the sampling noise of the metric
    metric: str
    val_size: int
    maximize: bool

    def margin(self, median: float) -> float:
        """How much worse than the median a trial must be to be pruned."""
        if self.min_delta is not None:
            return self.min_delta
        scale = PROPORTION_METRICS.get(self.metric)
        if scale is None or self.val_size <= 0:
            return 0.0
        p = min(max((median + (1.0 if scale == 2.0 else 0.0)) / scale, 0.0), 1.0)
        return scale * max(math.sqrt(2.0 * p * (1.0 - p) / self.val_size), 1.0 / self.val_size)

    def describe(self) -> str:
        """The rule in a sentence, for the report and the sweep's first message."""
        if self.min_delta is not None:
            noise = f"by more than {self.min_delta:g} (optimization.pruner_min_delta)"
        elif self.metric in PROPORTION_METRICS and self.val_size > 0:
            noise = (f"by more than the sampling noise of {self.val_size} validation samples (the standard error of "
                     "a difference of two measurements, at least one sample)")
        else:
            noise = ("at all (a loss has no sampling-noise formula; set optimization.pruner_min_delta for a "
                     "margin)")
        return (f"a trial is pruned from epoch {self.warmup_epochs} on, once {self.startup_trials} trials have "
                f"completed, when its best {self.metric} so far is worse than their median at the same epoch {noise}")

    def to_json(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs, "startup_trials": self.startup_trials,
                "min_delta": self.min_delta, "rule": self.describe()}


def pruning_rule(opt: OptimizationSection, trial_epochs: int, metric: str, val_size: int,
                 maximize: bool) -> PruningRule:
    """The rule, with the defaults in proportion to the budget: half the epochs of a trial (rounded
    up) before it may be pruned, a third of the trials (at least 2) completed before any is."""
    warmup = opt.pruner_warmup_epochs if opt.pruner_warmup_epochs is not None else max(1, math.ceil(trial_epochs / 2))
    startup = (opt.pruner_startup_trials if opt.pruner_startup_trials is not None
               else max(2, math.ceil(opt.n_trials / 3)))
    return PruningRule(warmup, startup, opt.pruner_min_delta, metric, val_size, maximize)


@dataclass
class Verdict:
    """What the pruner weighed for a trial at its latest epoch (for the message that says why)."""
    epoch: int
    best: float
    median: float
    margin: float
    completed: int
    pruned: bool = False


def build_pruner(optuna: Any, rule: PruningRule) -> Any:
    """An Optuna pruner that applies `rule`, and keeps its latest verdict per trial in `.verdicts`."""

    class EvidencePruner(optuna.pruners.BasePruner):
        def __init__(self) -> None:
            self.verdicts: dict[int, Verdict] = {}

        def prune(self, study: Any, trial: Any) -> bool:
            epoch = trial.last_step
            if epoch is None or epoch < rule.warmup_epochs:
                return False
            completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if len(completed) < rule.startup_trials:
                return False
            peers = [t.intermediate_values[epoch] for t in completed
                     if epoch in t.intermediate_values and math.isfinite(t.intermediate_values[epoch])]
            own = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
            if not peers or not own:
                return False
            median = statistics.median(peers)
            best = max(own) if rule.maximize else min(own)
            margin = rule.margin(median)
            worse = best < median - margin if rule.maximize else best > median + margin
            self.verdicts[trial.number] = Verdict(epoch, best, median, margin, len(peers), worse)
            return worse

    return EvidencePruner()


def pruned_at(trials: list[dict[str, Any]]) -> dict[str, int]:
    """How many trials were pruned after each epoch ({"3": 2} : two after epoch 3)."""
    counts: dict[int, int] = {}
    for t in trials:
        if t["state"] == "PRUNED" and t.get("epochs"):
            counts[t["epochs"]] = counts.get(t["epochs"], 0) + 1
    return {str(k): v for k, v in sorted(counts.items())}
