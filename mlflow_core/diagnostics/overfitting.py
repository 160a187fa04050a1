"""overfitting: validation loss rising above its best while the training loss keeps falling, and a
train–val accuracy gap that the validation set's sampling noise does not explain.
Playbook and thresholds: diagnostics/overfitting.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.workflow.noise import Z, accuracy_gap, run_at_chance, weighed_confidence

OVERFIT_VAL_RISE, OVERFIT_ACC_GAP = 0.10, 0.05  # val loss 10 % above its best; train-val accuracy gap
FITTED = 0.95  # a training accuracy this high: the training data is fitted
SMALL_DATA_PER_CLASS = 50  # fewer training samples per class than this: too little data to generalise from


def overfitting(ctx: DiagnoseContext) -> Diagnosis:
    # the epochs' JSON form: the figures compared here, and quoted in the evidence as recorded
    epochs = [e.model_dump(mode="json") for e in ctx.metrics.epochs if isinstance(e.val_loss, (int, float))]
    data = ctx.metrics.data
    findings = []
    probes: dict[str, Any] = {"validated_epochs": len(epochs)}
    sensitivity = {}
    if len(epochs) >= 3:
        best = min(epochs, key=lambda e: e["val_loss"])
        last = epochs[-1]
        rise = last["val_loss"] / best["val_loss"] - 1 if best["val_loss"] > 0 else 0.0
        gap = accuracy_gap(last.get("train_accuracy", 0.0), data.train_size, last.get("val_accuracy") or 0.0,
                           data.val_size, floor=OVERFIT_ACC_GAP)
        train_fell = isinstance(last.get("train_loss"), (int, float)) and last["train_loss"] < best["train_loss"]
        probes.update(best_val_epoch=best["epoch"], val_loss_rise=round(rise, 4),
                      accuracy_gap=round(gap.effect, 4),
                      accuracy_gap_noise=round(gap.noise, 4), gap_strength=gap.strength)
        sensitivity["overfitting"] = (
            f"a train − val accuracy gap of {gap.smallest:.1%} ({data.val_size} validation and {data.train_size} "
            f"training samples: {Z:g} standard errors of the gap is {Z * gap.noise:.1%}, and wf's floor is "
            f"{OVERFIT_ACC_GAP:.0%}), with the validation loss {OVERFIT_VAL_RISE:.0%} above its best")
        evidence = {"best_val_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                    "last_val_loss": last["val_loss"], "train_accuracy": last.get("train_accuracy"),
                    "val_accuracy": last.get("val_accuracy"), "val_size": data.val_size,
                    "train_size": data.train_size}
        per_class = data.train_size / max(data.num_classes, 1)
        at_chance = run_at_chance(ctx.metrics)
        if at_chance is not None:
            # nothing learned transfers: not a variance to regularise away, a mismatch to find
            findings.append(Finding(
                "overfitting", "validation_at_chance", 0.8, {**evidence, "val_mcc": last.get("val_mcc"),
                                                             "chance": ctx.metrics.chance.model_dump(mode="json")},
                "Check that the validation data is prepared as the training data is (the same normalisation, "
                "band or channel order, resizing), that its labels belong to its inputs (the same class mapping), "
                "and that the inputs are standardised (data.normalize: per_channel): raw inputs far from 0 leave "
                "batch norm's running statistics behind the batches' in a short run. If the splits come from "
                "different places or times, the model may have learned what only the training split shows.",
                at_chance["message"], None))
        elif rise > OVERFIT_VAL_RISE and train_fell and gap.stands_out and last["epoch"] > best["epoch"]:
            findings.append(Finding(
                "overfitting", "overfitting", weighed_confidence(0.85 if rise > 3 * OVERFIT_VAL_RISE else 0.7, gap.strength),
                evidence,
                "Keep the best checkpoint (early stopping on val_loss), add regularisation (weight decay, dropout, "
                "augmentation) or more data.",
                f"validation loss rose {rise:.0%} above its best (epoch {best['epoch']}) while training loss kept "
                f"falling; train accuracy exceeds val accuracy by {gap.effect:.1%}, {gap.strength:g} standard errors "
                f"of {data.val_size} validation samples", gap.strength))
        elif gap.stands_out and last.get("train_accuracy", 0.0) >= FITTED:
            # the training data fitted, validation far behind, its loss not (yet) rising: high variance.
            # With few samples per class the remedy is data, not early stopping.
            small = per_class < SMALL_DATA_PER_CLASS
            findings.append(Finding(
                "overfitting", "too_little_data" if small else "generalization_gap",
                weighed_confidence(0.7 if small else 0.6, gap.strength), evidence,
                ("Add training data (or augmentation that makes new samples of it); regularise (weight decay, "
                 "dropout); a smaller model generalises better from few samples." if small else
                 "Regularise (weight decay, dropout, augmentation) or add data; the validation loss is not rising, "
                 "so early stopping alone will not close the gap."),
                f"the model fits its training data (train accuracy {last.get('train_accuracy'):.1%}) but reaches "
                f"{last.get('val_accuracy'):.1%} on validation, a gap of {gap.effect:.1%} at {gap.strength:g} "
                f"standard errors"
                + (f", with {per_class:.0f} training samples per class (below {SMALL_DATA_PER_CLASS})" if small
                   else ", while the validation loss has not turned up"), gap.strength))
    else:
        sensitivity["overfitting"] = "nothing: at least 3 validated epochs are needed to see a trend"
    return Diagnosis("overfitting", ctx.run.run_id, findings, probes=probes, sensitivity=sensitivity)


DIAGNOSTIC = Diagnostic("overfitting", overfitting,
                        sees="a train − val accuracy gap beyond the noise of the validation set, with a rising validation loss")
