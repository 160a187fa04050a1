"""underfitting: the model misses the target on the training data too (high bias): too few epochs,
too little capacity, or too much regularisation.
Playbook and thresholds: diagnostics/underfitting.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnosis, Diagnostic, Finding
from mlflow_core.diagnostics.context import DiagnoseContext, fmt_value, number_or_none
from mlflow_core.diagnostics.convergence_stall import stall_symptoms

UNDERFIT_TRAIN_ACCURACY = 0.6  # without a target: final train accuracy below this is underfitting
STILL_FALLING = 0.05  # the last 3 epochs' train loss 5 % below the 3 before: training was cut short
HEAVY_WEIGHT_DECAY, HEAVY_DROPOUT = 0.05, 0.5


def underfitting(ctx: DiagnoseContext) -> Diagnosis:
    m = ctx.metrics
    epochs = [e for e in m.epochs if number_or_none(e.train_accuracy) is not None]
    probes: dict[str, Any] = {"epochs": len(epochs)}
    if m.nonfinite or not epochs:
        probes["note"] = "no completed epoch to judge" if not epochs else "the run ended on a non-finite loss"
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    symptoms = stall_symptoms(ctx)
    if symptoms["flat"] or symptoms["at_chance"]:
        probes["note"] = "the model did not learn at all: see `wf diagnose convergence_stall`"
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    last = epochs[-1]
    train_acc, val_acc = last.train_accuracy, number_or_none(last.val_accuracy)
    gap = train_acc - val_acc if val_acc is not None else 0.0
    best = m.best.model_dump() if m.best else {}
    target, metric = m.target, m.metric
    train_loss = number_or_none(last.train_loss)
    # the training side of the metric, where training measures it (F1, MCC and IoU are validation-only)
    counterpart = {"val_accuracy": ("accuracy", train_acc), "val_loss": ("loss", train_loss)}.get(metric)
    if target is not None and number_or_none(best.get("value")) is not None and counterpart is not None:
        maximize = m.mode == "max"
        missed = best["value"] < target if maximize else best["value"] > target
        # high bias: the model misses the target on its own training data too
        train_name, train_value = counterpart
        train_missed = train_value is not None and (train_value < target if maximize else train_value > target)
        yardstick = (f"the best {metric} {best['value']:.4g} misses validation.target {target:g}, and the training "
                     f"{train_name} {fmt_value(train_value)} misses it too")
    else:
        missed = train_missed = train_acc < UNDERFIT_TRAIN_ACCURACY
        why_not = ("no validation.target set" if target is None else
                   f"training does not measure {metric}, so the target is not compared")
        yardstick = f"the final train accuracy {train_acc:.3f} is below {UNDERFIT_TRAIN_ACCURACY} ({why_not})"
    probes.update(train_accuracy=train_acc, val_accuracy=val_acc, accuracy_gap=round(gap, 4), missed_target=missed,
                  train_missed_target=train_missed)
    if not (missed and train_missed):
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    training, model = m.config.get("training") or {}, m.config.get("model") or {}  # the run's resolved config
    losses = [number_or_none(e.train_loss) for e in epochs]
    k = min(3, len(losses) // 2)
    recent, before = losses[-k:] if k else [], losses[-2 * k:-k] if k else []
    trend = ((sum(before) - sum(recent)) / sum(before) if k and None not in recent + before and sum(before) > 0
             else None)
    still_falling = len(losses) == 1 or (trend is not None and trend > STILL_FALLING)
    early_stopped = m.status == "early_stopped"
    evidence = {"train_accuracy": train_acc, "val_accuracy": val_acc, "target": target, "best": best,
                "epochs": len(epochs), "parameters": m.parameters,
                "last_train_losses": losses[-3:], "train_loss_trend": trend, "weight_decay": training.get("weight_decay"),
                "dropout": model.get("dropout")}
    why = f"{yardstick} (train − val accuracy {gap:+.3f}): high bias"
    findings = []
    if still_falling and not early_stopped:
        findings.append(Finding(
            "underfitting", "too_few_epochs", 0.75, evidence,
            "Train longer (training.epochs) or with a higher learning rate: the loss was still falling.",
            f"{why}; the training loss was still falling when the run ended after {len(epochs)} epochs"))
    elif (training.get("weight_decay") or 0) >= HEAVY_WEIGHT_DECAY or (model.get("dropout") or 0) >= HEAVY_DROPOUT:
        findings.append(Finding(
            "underfitting", "over_regularized", 0.7, evidence,
            "Lower training.weight_decay and model.dropout: the regulariser holds the model back.",
            f"{why}; weight decay {training.get('weight_decay')} and dropout {model.get('dropout')} are heavy"))
    else:
        findings.append(Finding(
            "underfitting", "capacity_too_low", 0.7, evidence,
            "Use a larger model (more channels or layers, e.g. model.channels or resnet18) and train until the "
            "training loss stops falling.",
            f"{why}; the training loss has levelled off with {m.parameters} parameters"))
    return Diagnosis("underfitting", ctx.run.run_id, findings, probes=probes)


DIAGNOSTIC = Diagnostic("underfitting", "the training data not fitted either", underfitting)
