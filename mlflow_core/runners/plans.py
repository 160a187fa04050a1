"""How long a phase's training will take, said before it trains: from the baseline's measured epoch
time (the same config, on this machine), else setup's measured training throughput."""

from __future__ import annotations

import statistics
from typing import Any


def about(project: Any, epochs: int, *, from_baseline: bool = True) -> str:
    """', about 6 min at the baseline's 4.2 s per epoch' for `epochs` epochs ('' when nothing was
    measured). `from_baseline=False`: setup's throughput only (the baseline's own plan, which must not
    read the evidence it is about to replace)."""
    per_epoch = epoch_seconds(project, from_baseline)
    return f", about {duration(epochs * per_epoch[0])} at {per_epoch[1]}" if per_epoch else ""


def epoch_seconds(project: Any, from_baseline: bool = True) -> tuple[float, str] | None:
    """Seconds per epoch of this config, and where the figure comes from."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.workflow.evidence import read_evidence
    from mlflow_core.workflow.records import load_run_metrics

    baseline = read_evidence(project, "baseline") if from_baseline else None
    if baseline is not None and baseline.intact:
        try:
            record = load_run_metrics(project.root / baseline.facts.metrics.path)
        except (UserInputError, OSError):
            record = None
        times = [e.duration_s for e in (record.epochs if record else []) if e.duration_s]
        if times:
            return statistics.median(times), f"the baseline's {statistics.median(times):.1f} s per epoch"
    setup = read_evidence(project, "setup")
    throughput = setup.facts.throughput if setup is not None and setup.intact else None
    if throughput is None or not throughput.model:
        return None
    rate = min(throughput.model, throughput.loader.get(throughput.path, throughput.model))
    if not rate > 0:  # too few samples to time (a tiny dataset): no estimate rather than a wrong one
        return None
    return setup.facts.data.train_size / rate, f"the {rate:,.0f} samples/s setup measured"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else (f"{seconds / 60:.0f} min" if seconds < 5400
                                                     else f"{seconds / 3600:.1f} h")
