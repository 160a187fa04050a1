"""The decision after the baseline as a pure function: acceptable → finalization; insufficient →
diagnostics; failure → diagnostics, naming the playbook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_core.workflow.noise import accuracy_gap, run_at_chance
from mlflow_core.workflow.records import RunMetrics
from mlflow_core.workflow.units import metric_value


@dataclass(frozen=True)
class Recommendation:
    verdict: str  # acceptable, insufficient, failure, undecided
    next_phase: str
    command: str
    reason: str
    playbook: str | None = None


# where a phases/baseline.yaml written before a key existed does not say
FALLBACK_PLAYBOOKS = {"validation_at_chance": "overfitting"}


def recommend(metrics: RunMetrics, criteria: list[dict[str, Any]], playbooks: dict[str, str]) -> Recommendation:
    status = metrics.status
    failed = {c["id"] for c in criteria if not c["passed"]}

    def failure(key: str, reason: str) -> Recommendation:
        book = playbooks.get(key, FALLBACK_PLAYBOOKS.get(key, "convergence_stall"))
        return Recommendation("failure", "diagnostics", "wf decide diagnose", reason, f"diagnostics/{book}.md")

    if status == "failed_nan":
        return failure("failed_nan", f"the loss turned non-finite ({metrics.nonfinite.message if metrics.nonfinite else ''})")
    if status in ("crashed", "interrupted"):
        return failure("crashed", f"the run {status}: {metrics.stop_reason}; see logs/training.log")
    if "loss_decreased" in failed:
        return failure("no_learning", "the training loss did not decrease: the model is not learning")
    if "beats_chance" in failed:
        if run_at_chance(metrics):
            return failure("validation_at_chance", f"the model fits its training data (train accuracy "
                           f"{metric_value(metrics.epochs[-1].train_accuracy, 'accuracy')}) but scores no better on "
                           "validation than a predictor that learned nothing: what it learned does not transfer "
                           "(compare how the two splits are prepared)")
        return failure("no_learning", "the model scores no better than a predictor that learned nothing (see "
                       "the criterion above): it is not learning")
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
                              f"best {metrics.metric} {metric_value(value, metrics.metric)} meets the target "
                              f"{metric_value(target, metrics.metric)}")
    book, why = _where_a_miss_points(metrics)
    return Recommendation("insufficient", "diagnostics", "wf decide diagnose",
                          f"best {metrics.metric} {metric_value(value, metrics.metric)} "
                          f"misses the target {metric_value(target, metrics.metric)}{why}", f"diagnostics/{book}.md")


GENERALIZATION_GAP = 0.05  # train accuracy above validation accuracy by more: what is fitted does not generalize


def _where_a_miss_points(metrics: RunMetrics) -> tuple[str, str]:
    """The playbook for a run that learns but misses its target, from the last validated epoch: a
    generalization gap (overfitting: more data, augmentation, regularisation), the training data not
    fitted either (underfitting: capacity, epochs), or, without accuracies to compare, a stall."""
    validated = [e for e in metrics.epochs if isinstance(e.val_accuracy, float)]
    if not validated:
        return "convergence_stall", ""
    train, val = validated[-1].train_accuracy, validated[-1].val_accuracy
    gap = accuracy_gap(train, metrics.data.train_size, val, metrics.data.val_size, floor=GENERALIZATION_GAP)
    if gap.stands_out:
        return "overfitting", (f": the model fits its training data (train accuracy {train:.1%}) far better than "
                               f"validation ({val:.1%}), a generalization gap of {gap.strength:g} standard errors")
    within = (f"; their gap of {gap.effect:.1%} is within the noise of {metrics.data.val_size} validation samples"
              if gap.effect > GENERALIZATION_GAP else "")
    return "underfitting", (f": train accuracy {train:.1%} is as short as validation's ({val:.1%}), the training "
                            f"data is not fitted either{within}")
