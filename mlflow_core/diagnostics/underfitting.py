"""underfitting: the model misses the target on the training data too (high bias): too few epochs,
too little capacity, or too much regularisation.
Playbook and thresholds: diagnostics/underfitting.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext, number_or_none
from mlflow_core.diagnostics.convergence_stall import stall_symptoms
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.workflow.noise import Weighed, Z, accuracy_gap, proportion_noise, weighed_confidence
from mlflow_core.workflow.units import metric_value

UNDERFIT_TRAIN_ACCURACY = 0.6  # without a target: final train accuracy below this is underfitting
STILL_FALLING = 0.05  # the last 3 epochs' train loss 5 % below the 3 before: training was cut short
HEAVY_WEIGHT_DECAY, HEAVY_DROPOUT = 0.05, 0.5
TRAIN_BELOW_VAL = 0.05  # validation accuracy this far above training's: training is harder, not the model weak


def underfitting(ctx: DiagnoseContext) -> Diagnosis:
    """Measure the run's fit of its own training data against the target (or a floor), judge whether
    it is high bias, and name the likeliest reason: cut short, over-regularised, too small."""
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
    bias = _high_bias(m, train_acc, number_or_none(last.train_loss))
    probes.update(train_accuracy=train_acc, val_accuracy=val_acc, accuracy_gap=round(gap, 4),
                  missed_target=bias.missed, train_missed_target=bias.train_missed)
    sensitivity = {"underfitting": bias.sees}
    if not (bias.missed and bias.train_missed):
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    cfg = ctx.run_config()
    heavy = cfg.training.weight_decay >= HEAVY_WEIGHT_DECAY or cfg.model.dropout >= HEAVY_DROPOUT
    mixing = cfg.augmentation.mixup_alpha > 0 or cfg.augmentation.cutmix_alpha > 0
    if (val_acc is not None and not heavy and not mixing
            and accuracy_gap(val_acc, m.data.val_size, train_acc, m.data.train_size, floor=TRAIN_BELOW_VAL).stands_out):
        # training harder than validation: not a model short of capacity
        probes["note"] = (f"validation accuracy {val_acc:.1%} is above training accuracy {train_acc:.1%} "
                          "beyond their noise, without heavy regularisation or mixing: the training labels are "
                          "noisier than the validation labels (annotation noise) or the training inputs harder; "
                          "that is not high bias")
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    finding = _reason(m, cfg, epochs, bias, f"{bias.yardstick} (train − val accuracy {gap:+.3f}): high bias", heavy)
    return Diagnosis("underfitting", ctx.run.run_id, [finding], probes=probes, sensitivity=sensitivity)


@dataclass(frozen=True)
class HighBias:
    missed: bool  # the validation metric misses the target (or the floor)
    train_missed: bool  # and so does training's, beyond the noise of the training samples
    weighed: Weighed
    yardstick: str  # what was compared with what, in words
    sees: str  # the smallest shortfall this test can see


def _high_bias(m: Any, train_acc: float, train_loss: float | None) -> HighBias:
    """Does the model miss the target on its own training data too? Against validation.target where
    training measures that metric (accuracy, loss), else against UNDERFIT_TRAIN_ACCURACY; an
    accuracy beyond the noise of the training samples (a loss is compared as it is)."""
    best, target, metric = (m.best.model_dump() if m.best else {}), m.target, m.metric
    # the training side of the metric, where training measures it (F1, MCC and IoU are validation-only)
    counterpart = {"val_accuracy": ("accuracy", train_acc), "val_loss": ("loss", train_loss)}.get(metric)
    if target is None or number_or_none(best.get("value")) is None or counterpart is None:
        noise = proportion_noise(UNDERFIT_TRAIN_ACCURACY, m.data.train_size)
        weighed = Weighed(UNDERFIT_TRAIN_ACCURACY - train_acc, noise, Z * noise)
        missed = weighed.effect > 0 and weighed.stands_out
        why_not = ("no validation.target set" if target is None else
                   f"training does not measure {metric}, so the target is not compared")
        return HighBias(missed, missed, weighed,
                        f"the final train accuracy {train_acc:.3f} is below {UNDERFIT_TRAIN_ACCURACY} ({why_not})",
                        f"a final train accuracy {weighed.smallest:.2%} below {UNDERFIT_TRAIN_ACCURACY:.0%} ({Z:g} "
                        f"standard errors of {m.data.train_size} training samples; {why_not})")
    maximize = m.mode == "max"
    train_name, train_value = counterpart
    shortfall = None if train_value is None else (target - train_value) if maximize else (train_value - target)
    noise = proportion_noise(target, m.data.train_size) if train_name == "accuracy" else 0.0
    weighed = Weighed(shortfall if shortfall is not None else 0.0, noise, Z * noise)
    return HighBias(best["value"] < target if maximize else best["value"] > target,
                    shortfall is not None and shortfall > 0 and weighed.stands_out, weighed,
                    f"the best {metric} {metric_value(best['value'], metric)} misses validation.target "
                    f"{metric_value(target, metric)}, and the training {train_name} "
                    f"{metric_value(train_value, metric)} misses it too",
                    f"a training {train_name} short of the target by {weighed.smallest:.2%} ({Z:g} standard errors "
                    f"of {m.data.train_size} training samples)" if train_name == "accuracy" else
                    "a training loss above the target at all (a loss has no sampling-noise formula)")


def _reason(m: Any, cfg: Any, epochs: list[Any], bias: HighBias, why: str, heavy: bool) -> Finding:
    """Cut short (the training loss still falling), held back (heavy regularisation), or too small."""
    losses = [number_or_none(e.train_loss) for e in epochs]
    k = min(3, len(losses) // 2)
    recent, before = losses[-k:] if k else [], losses[-2 * k:-k] if k else []
    trend = ((sum(before) - sum(recent)) / sum(before) if k and None not in recent + before and sum(before) > 0
             else None)
    strength = bias.weighed.strength if bias.weighed.noise > 0 else None
    wd, dropout = cfg.training.weight_decay, cfg.model.dropout
    evidence = {"train_accuracy": epochs[-1].train_accuracy, "val_accuracy": number_or_none(epochs[-1].val_accuracy),
                "target": m.target, "best": m.best.model_dump() if m.best else {}, "epochs": len(epochs),
                "parameters": m.parameters, "last_train_losses": losses[-3:], "train_loss_trend": trend,
                "weight_decay": wd, "dropout": dropout}
    if (len(losses) == 1 or (trend is not None and trend > STILL_FALLING)) and m.status != "early_stopped":
        return Finding("underfitting", "too_few_epochs", _confidence(0.75, strength), evidence,
                       "Train longer (training.epochs) or with a higher learning rate: the loss was still falling.",
                       f"{why}; the training loss was still falling when the run ended after {len(epochs)} epochs",
                       strength)
    if heavy:
        return Finding("underfitting", "over_regularized", _confidence(0.7, strength), evidence,
                       "Lower training.weight_decay and model.dropout: the regulariser holds the model back.",
                       f"{why}; weight decay {wd} and dropout {dropout} are heavy", strength)
    return Finding("underfitting", "capacity_too_low", _confidence(0.7, strength), evidence,
                   "Use a larger model (more channels or layers, e.g. model.channels or resnet18) and train until "
                   "the training loss stops falling.",
                   f"{why}; the training loss has levelled off with {m.parameters} parameters", strength)


def _confidence(base: float, strength: float | None) -> float:
    return base if strength is None else weighed_confidence(base, strength)


DIAGNOSTIC = Diagnostic("underfitting", underfitting,
                        sees="a training accuracy short of the target by more than the noise of the training samples")
