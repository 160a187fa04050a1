"""The decision after the baseline as a pure function: acceptable → finalization; insufficient →
diagnostics; failure → diagnostics, naming the playbook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_core.workflow.records import RunMetrics


@dataclass(frozen=True)
class Recommendation:
    verdict: str  # acceptable, insufficient, failure, undecided
    next_phase: str
    command: str
    reason: str
    playbook: str | None = None


def recommend(metrics: RunMetrics, criteria: list[dict[str, Any]], playbooks: dict[str, str]) -> Recommendation:
    status = metrics.status
    failed = {c["id"] for c in criteria if not c["passed"]}

    def failure(key: str, reason: str) -> Recommendation:
        book = playbooks.get(key, "convergence_stall")
        return Recommendation("failure", "diagnostics", "wf decide diagnose", reason, f"diagnostics/{book}.md")

    if status == "failed_nan":
        return failure("failed_nan", f"the loss turned non-finite ({metrics.nonfinite.message if metrics.nonfinite else ''})")
    if status in ("crashed", "interrupted"):
        return failure("crashed", f"the run {status}: {metrics.stop_reason}; see logs/training.log")
    if "loss_decreased" in failed:
        return failure("no_learning", "the training loss did not decrease: the model is not learning")
    if "gpu_utilization" in failed:
        return Recommendation("insufficient", "diagnostics", "wf decide diagnose",
                              "GPU utilization is below target: the run is not using the accelerator well",
                              f"diagnostics/{playbooks.get('low_gpu_utilization', 'resource_inefficiency')}.md")
    best, target = metrics.best, metrics.target
    if target is None:
        return Recommendation("undecided", "finalization", "wf decide finalize",
                              "no validation.target is set in the config, so acceptability is your call: "
                              "finalize if the results meet your needs, otherwise diagnose or optimize")
    value = best.value if best else None
    ok = value is not None and (value >= target if metrics.mode == "max" else value <= target)
    if ok:
        return Recommendation("acceptable", "finalization", "wf decide finalize",
                              f"best {metrics.metric} {value:.4g} meets the target {target}")
    return Recommendation("insufficient", "diagnostics", "wf decide diagnose",
                          f"best {metrics.metric} {value if value is None else format(value, '.4g')} "
                          f"misses the target {target}", "diagnostics/convergence_stall.md")
