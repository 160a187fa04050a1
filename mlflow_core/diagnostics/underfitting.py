"""underfitting: the model misses the target on the training data too (high bias): too few epochs,
too little capacity, or too much regularisation.
Playbook and thresholds: diagnostics/underfitting.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnosis, Diagnostic, Finding
from mlflow_core.diagnostics.context import DiagnoseContext, number_or_none
from mlflow_core.diagnostics.convergence_stall import stall_symptoms
from mlflow_core.workflow.noise import Weighed, Z, accuracy_gap, proportion_noise, weighed_confidence
from mlflow_core.workflow.units import metric_value

UNDERFIT_TRAIN_ACCURACY = 0.6  # without a target: final train accuracy below this is underfitting
STILL_FALLING = 0.05  # the last 3 epochs' train loss 5 % below the 3 before: training was cut short
HEAVY_WEIGHT_DECAY, HEAVY_DROPOUT = 0.05, 0.5
TRAIN_BELOW_VAL = 0.05  # validation accuracy this far above training's: training is harder, not the model weak


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
    # the noise of a training accuracy at the level it is compared with (the test's null hypothesis)
    def train_noise(level: float) -> float:
        return proportion_noise(level, m.data.train_size)

    if target is not None and number_or_none(best.get("value")) is not None and counterpart is not None:
        maximize = m.mode == "max"
        missed = best["value"] < target if maximize else best["value"] > target
        # high bias: the model misses the target on its own training data too, beyond the noise of
        # an accuracy measured on the training samples (a loss is compared as it is)
        train_name, train_value = counterpart
        shortfall = (None if train_value is None else (target - train_value) if maximize else (train_value - target))
        noise = train_noise(target) if train_name == "accuracy" else 0.0
        weighed = Weighed(shortfall if shortfall is not None else 0.0, noise, Z * noise)
        train_missed = shortfall is not None and shortfall > 0 and weighed.stands_out
        yardstick = (f"the best {metric} {metric_value(best['value'], metric)} misses validation.target "
                     f"{metric_value(target, metric)}, and the training {train_name} "
                     f"{metric_value(train_value, metric)} misses it too")
        sees = (f"a training {train_name} short of the target by {weighed.smallest:.2%} ({Z:g} standard errors of "
                f"{m.data.train_size} training samples)" if train_name == "accuracy" else
                "a training loss above the target at all (a loss has no sampling-noise formula)")
    else:
        noise = train_noise(UNDERFIT_TRAIN_ACCURACY)
        weighed = Weighed(UNDERFIT_TRAIN_ACCURACY - train_acc, noise, Z * noise)
        missed = train_missed = weighed.effect > 0 and weighed.stands_out
        why_not = ("no validation.target set" if target is None else
                   f"training does not measure {metric}, so the target is not compared")
        yardstick = f"the final train accuracy {train_acc:.3f} is below {UNDERFIT_TRAIN_ACCURACY} ({why_not})"
        sees = (f"a final train accuracy {weighed.smallest:.2%} below {UNDERFIT_TRAIN_ACCURACY:.0%} ({Z:g} standard "
                f"errors of {m.data.train_size} training samples; {why_not})")
    probes.update(train_accuracy=train_acc, val_accuracy=val_acc, accuracy_gap=round(gap, 4), missed_target=missed,
                  train_missed_target=train_missed)
    sensitivity = {"underfitting": sees}
    if not (missed and train_missed):
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    strength = weighed.strength if weighed.noise > 0 else None
    if val_acc is not None and accuracy_gap(val_acc, m.data.val_size, train_acc, m.data.train_size,
                                            floor=TRAIN_BELOW_VAL).stands_out:
        training_cfg, model_cfg = m.config.get("training") or {}, m.config.get("model") or {}
        augmentation = m.config.get("augmentation") or {}
        heavy = ((training_cfg.get("weight_decay") or 0) >= HEAVY_WEIGHT_DECAY
                 or (model_cfg.get("dropout") or 0) >= HEAVY_DROPOUT)
        mixing = (augmentation.get("mixup_alpha") or 0) > 0 or (augmentation.get("cutmix_alpha") or 0) > 0
        if not heavy and not mixing:
            # training harder than validation: not a model short of capacity
            probes["note"] = (f"validation accuracy {val_acc:.1%} is above training accuracy {train_acc:.1%} "
                              "beyond their noise, without heavy regularisation or mixing: the training labels are "
                              "noisier than the validation labels (annotation noise) or the training inputs harder; "
                              "that is not high bias")
            return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
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
            "underfitting", "too_few_epochs", _confidence(0.75, strength), evidence,
            "Train longer (training.epochs) or with a higher learning rate: the loss was still falling.",
            f"{why}; the training loss was still falling when the run ended after {len(epochs)} epochs", strength))
    elif (training.get("weight_decay") or 0) >= HEAVY_WEIGHT_DECAY or (model.get("dropout") or 0) >= HEAVY_DROPOUT:
        findings.append(Finding(
            "underfitting", "over_regularized", _confidence(0.7, strength), evidence,
            "Lower training.weight_decay and model.dropout: the regulariser holds the model back.",
            f"{why}; weight decay {training.get('weight_decay')} and dropout {model.get('dropout')} are heavy",
            strength))
    else:
        findings.append(Finding(
            "underfitting", "capacity_too_low", _confidence(0.7, strength), evidence,
            "Use a larger model (more channels or layers, e.g. model.channels or resnet18) and train until the "
            "training loss stops falling.",
            f"{why}; the training loss has levelled off with {m.parameters} parameters", strength))
    return Diagnosis("underfitting", ctx.run.run_id, findings, probes=probes, sensitivity=sensitivity)


def _confidence(base: float, strength: float | None) -> float:
    return base if strength is None else weighed_confidence(base, strength)


DIAGNOSTIC = Diagnostic("underfitting", "the training data not fitted either", underfitting,
                        sees="a training accuracy short of the target by more than the noise of the training samples")
