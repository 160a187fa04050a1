"""How much of a measured effect sampling noise explains: for the detectors that judge estimates,
and for the recommendation after the baseline.

A detector that compares accuracies measured on a few hundred validation samples, or class counts
of a few samples per class, sees differences that chance alone produces. Each such detector asks
here how large its effect must be to stand out of the noise of the data at hand (`smallest`), fires
only above it, and records the effect in units of its noise (`strength`, a z-score), by which
`wf diagnose auto` ranks findings (`weighed_confidence`). Findings observed directly (a non-finite
loss, identical files) carry no strength: no sampling noise is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mlflow_core.workflow.units import metric_value

Z = 2.0  # an effect counts when it exceeds two standard errors of its noise (about 2.3 % by chance, one-sided)


@dataclass(frozen=True)
class Weighed:
    """An effect, the noise it is measured against, and the smallest effect that would count."""
    effect: float
    noise: float
    smallest: float  # the smallest effect that stands out of this noise (Z noise, or a detector's floor)

    @property
    def strength(self) -> float:
        """The effect in units of its noise (a z-score), rounded for the report."""
        return round(self.effect / self.noise, 1) if self.noise > 0 else math.inf

    @property
    def stands_out(self) -> bool:
        return self.effect >= self.smallest


def weighed_confidence(base: float, strength: float) -> float:
    """A detector's confidence in a cause, times the one-sided probability that chance alone would
    not produce an effect this strong (Φ(strength)): a finding barely out of the noise ranks below
    one that stands far out of it."""
    return round(base * 0.5 * (1 + math.erf(strength / math.sqrt(2))), 2)


def proportion_noise(p: float, n: int) -> float:
    """The standard error of a proportion p measured on n samples, never below one sample (1/n)."""
    if n <= 0:
        return math.inf
    p = min(max(p, 0.0), 1.0)
    return max(math.sqrt(p * (1 - p) / n), 1.0 / n)


def accuracy_gap(train: float, n_train: int, val: float, n_val: int, floor: float = 0.0) -> Weighed:
    """train − val accuracy against the noise of the difference of the two measurements."""
    noise = math.hypot(proportion_noise(train, n_train), proportion_noise(val, n_val))
    return Weighed(train - val, noise, max(floor, Z * noise))


def beyond_chance(accuracy: float, classes: int, n_val: int) -> Weighed:
    """A validation accuracy above the chance level 1/classes, against the noise of an accuracy at
    chance on n_val samples: how far above chance the model must be to show it learned anything."""
    chance = 1.0 / classes
    noise = proportion_noise(chance, n_val)
    return Weighed(accuracy - chance, noise, Z * noise)


def mcc_beyond_chance(mcc: float, n: int) -> Weighed:
    """A validation MCC against the MCC of a predictor that learned nothing: 0 for any constant or
    label-independent predictor, whatever the class balance, with a standard error of about 1/√n
    on n samples (√n·MCC is close to standard normal under independence). For segmentation n counts
    pixels, which are not independent: the noise is understated, and a model at chance still shows
    an MCC of 0."""
    noise = 1.0 / math.sqrt(n) if n > 0 else math.inf
    return Weighed(mcc, noise, Z * noise)


def chance_level(support: list[int], units: str) -> dict[str, float | int | str]:
    """What a predictor that learned nothing scores on a split whose true classes occur `support`
    times: always predicting the majority class gets its share as accuracy and MCC 0, and predicting
    the class frequencies gets their entropy as cross-entropy loss."""
    total = sum(support)
    shares = [c / total for c in support] if total else []
    majority = max(range(len(support)), key=support.__getitem__) if support else 0
    return {"units": units, "count": total, "majority_class": majority,
            "majority_share": round(shares[majority], 6) if shares else 0.0,
            "prior_nll": round(-sum(p * math.log(p) for p in shares if p > 0), 6)}


CHANCE_QUANTILE = 0.99  # a class ratio counts as skew when a balanced source reaches it less than 1 % of the time


@lru_cache(maxsize=64)
def chance_class_ratio(samples: int, classes: int, draws: int = 4000) -> float:
    """The largest/smallest class-count ratio that `samples` labels drawn from `classes` equally
    likely classes exceed 1 % of the time (simulated, seeded: the same answer every time). inf when
    chance alone empties a class that often: then no ratio can show a skew."""
    import numpy as np

    if classes < 2 or samples < classes:
        return math.inf
    counts = np.random.default_rng(0).multinomial(samples, [1.0 / classes] * classes, size=draws)
    smallest = counts.min(axis=1)
    if (smallest == 0).mean() > 1 - CHANCE_QUANTILE:
        return math.inf
    ratios = counts.max(axis=1) / np.maximum(smallest, 1)
    return float(np.quantile(ratios, CHANCE_QUANTILE))


def class_count_strength(counts: list[int]) -> float:
    """How far the counts are from equal, as a z-score of Pearson's chi-square statistic against a
    uniform distribution ((X² − df) / √(2·df), its normal approximation)."""
    n, k = sum(counts), len(counts)
    if k < 2 or n == 0:
        return 0.0
    expected = n / k
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    return round((chi2 - (k - 1)) / math.sqrt(2 * (k - 1)), 1)


FITS_TRAINING = 0.9  # a training accuracy this high: the model has learned its training data
AT_CHANCE_EPOCHS = 3  # the validated epochs (the last ones) that must all sit at chance


def validation_at_chance(epochs: list[dict[str, Any]], chance: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run whose training accuracy reached FITS_TRAINING while its validation MCC stayed within the
    noise of 0 (what a predictor that learned nothing scores, whatever the class balance) over its
    last AT_CHANCE_EPOCHS validated epochs: what it learned does not transfer. An anomaly for the
    report and the decision after the baseline, never a stop: the run's figures are what they are."""
    validated = [e for e in epochs if isinstance(e.get("val_mcc"), (int, float))]
    if not chance or not chance.get("count") or len(validated) < 2:  # one validated epoch is no trend
        return None
    last = validated[-AT_CHANCE_EPOCHS:]
    train = epochs[-1].get("train_accuracy")
    if not isinstance(train, (int, float)) or train < FITS_TRAINING:
        return None
    weighed = [mcc_beyond_chance(float(e["val_mcc"]), int(chance["count"])) for e in last]
    if any(w.stands_out for w in weighed):
        return None
    accuracies = [e.get("val_accuracy") for e in last]
    shown = ", ".join(metric_value(a, "val_accuracy") for a in accuracies if isinstance(a, (int, float)))
    mccs = ", ".join(f"{e['val_mcc']:.3f}" for e in last)
    return {"kind": "validation_at_chance", "step": None, "epoch": last[-1]["epoch"],
            "message": f"validation at chance while training fits: train accuracy {metric_value(train, 'accuracy')}, "
                       f"but validation MCC {mccs} in epochs "
                       f"{last[0]['epoch']}–{last[-1]['epoch']} (within {weighed[-1].smallest:.3f} of 0, the noise of "
                       f"{chance['count']} {chance.get('units', 'samples')}; accuracy {shown}, the majority class's "
                       f"share {metric_value(chance.get('majority_share'), 'accuracy')}): nothing learned transfers "
                       "to validation"}


def run_at_chance(metrics: Any) -> dict[str, Any] | None:
    """validation_at_chance of a run's recorded metrics (workflow.records.RunMetrics)."""
    return validation_at_chance([e.model_dump(mode="json") for e in metrics.epochs],
                                metrics.chance.model_dump(mode="json") if metrics.chance else None)
