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
