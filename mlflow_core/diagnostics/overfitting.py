"""overfitting: validation loss rising above its best while the training loss keeps falling.
Playbook and thresholds: diagnostics/overfitting.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnosis, Diagnostic, Finding
from mlflow_core.diagnostics.context import DiagnoseContext

OVERFIT_VAL_RISE, OVERFIT_ACC_GAP = 0.10, 0.05  # val loss 10 % above its best; train-val accuracy gap


def overfitting(ctx: DiagnoseContext) -> Diagnosis:
    # the epochs' JSON form: the figures compared here, and quoted in the evidence as recorded
    epochs = [e.model_dump(mode="json") for e in ctx.metrics.epochs if isinstance(e.val_loss, (int, float))]
    findings = []
    probes: dict[str, Any] = {"validated_epochs": len(epochs)}
    if len(epochs) >= 3:
        best = min(epochs, key=lambda e: e["val_loss"])
        last = epochs[-1]
        rise = last["val_loss"] / best["val_loss"] - 1 if best["val_loss"] > 0 else 0.0
        gap = last.get("train_accuracy", 0) - last.get("val_accuracy", 0)
        train_fell = isinstance(last.get("train_loss"), (int, float)) and last["train_loss"] < best["train_loss"]
        probes.update(best_val_epoch=best["epoch"], val_loss_rise=round(rise, 4), accuracy_gap=round(gap, 4))
        if rise > OVERFIT_VAL_RISE and train_fell and gap > OVERFIT_ACC_GAP and last["epoch"] > best["epoch"]:
            findings.append(Finding(
                "overfitting", "overfitting", 0.85 if rise > 3 * OVERFIT_VAL_RISE else 0.7,
                {"best_val_epoch": best["epoch"], "best_val_loss": best["val_loss"], "last_val_loss": last["val_loss"],
                 "train_accuracy": last.get("train_accuracy"), "val_accuracy": last.get("val_accuracy")},
                "Keep the best checkpoint (early stopping on val_loss), add regularisation (weight decay, dropout, "
                "augmentation) or more data.",
                f"validation loss rose {rise:.0%} above its best (epoch {best['epoch']}) while training loss kept "
                f"falling; train accuracy exceeds val accuracy by {gap:.1%}"))
    return Diagnosis("overfitting", ctx.run.run_id, findings, probes=probes)


DIAGNOSTIC = Diagnostic("overfitting", "validation loss rising while training loss falls", overfitting)
