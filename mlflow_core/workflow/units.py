"""How figures are shown to people, the same way in every report, message and plot: accuracies in %
(a fraction is stored), every other metric (losses, F1, MCC, IoU) as it is."""

from __future__ import annotations

from typing import Any


def shows_percent(metric: str) -> bool:
    return metric.endswith("accuracy")


def percent(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def plain(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def metric_value(value: Any, metric: str) -> str:
    """A value of `metric` as every report shows it."""
    return percent(value) if shows_percent(metric) and isinstance(value, (int, float)) else plain(value)


def metric_difference(difference: float, metric: str) -> str:
    """A signed difference of two values of `metric` (accuracies in percentage points)."""
    return f"{difference * 100:+.2f} points" if shows_percent(metric) else f"{difference:+.4g}"


def wilson_interval(fraction: float, samples: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for z = 1.96) of a proportion measured on `samples` trials.
    Unlike the normal approximation (p ± z·√(p(1−p)/n)) it does not shrink to nothing at 0 or n
    successes: 48 of 48 correct still leaves the error rate anywhere up to about 7 %."""
    if samples <= 0:
        return 0.0, 1.0
    z2 = z * z
    denominator = 1 + z2 / samples
    center = (fraction + z2 / (2 * samples)) / denominator
    half = z * (fraction * (1 - fraction) / samples + z2 / (4 * samples * samples)) ** 0.5 / denominator
    return max(0.0, center - half), min(1.0, center + half)
