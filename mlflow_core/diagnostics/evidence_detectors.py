"""Diagnostics decided from recorded evidence alone (setup's data facts, the run's epochs): no torch.
Thresholds are stated in each playbook (diagnostics/<name>.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_core.diagnostics import Diagnosis, Finding
from mlflow_core.workflow.state import RunRecord

IMBALANCE_MODERATE, IMBALANCE_SEVERE = 3.0, 10.0  # largest / smallest training class
INPUT_ABS_LIMIT, INPUT_SPAN_LIMIT = 10.0, 20.0  # normalised inputs sit within about ±10
OVERFIT_VAL_RISE, OVERFIT_ACC_GAP = 0.10, 0.05  # val loss 10 % above its best; train-val accuracy gap


@dataclass
class DiagnoseContext:
    project_root: Path
    run: RunRecord
    run_dir: Path
    metrics: dict[str, Any]
    setup_facts: dict[str, Any]  # .wf/evidence/setup.json facts ({} if setup never ran)


def _data(ctx: DiagnoseContext) -> dict[str, Any] | None:
    data = ctx.setup_facts.get("data")
    return data if isinstance(data, dict) and "train_size" in data else None


def _no_setup(name: str, ctx: DiagnoseContext) -> Diagnosis:
    return Diagnosis(name, ctx.run.run_id, [], probes={"note": "no data facts recorded: run `wf phase setup`, "
                                                       "which scans the data, then diagnose again"})


def data_leakage(ctx: DiagnoseContext) -> Diagnosis:
    data = _data(ctx)
    if data is None:
        return _no_setup("data_leakage", ctx)
    overlap, val = data.get("overlap_train_val", 0), max(data.get("val_size", 0), 1)
    findings = []
    if overlap:
        share = overlap / val
        findings.append(Finding(
            "data_leakage", "train_val_overlap", 0.95 if share >= 0.01 else 0.7,
            {"identical_samples": overlap, "val_size": val, "share_of_val": round(share, 4)},
            "Remove the duplicated samples from val (or train) and split again: validation figures are "
            "optimistic while they overlap.",
            f"{overlap} validation samples ({share:.1%}) are byte-identical to training samples"))
    return Diagnosis("data_leakage", ctx.run.run_id, findings,
                     probes={"overlap_train_val": overlap, "scanned": data.get("scanned")})


def class_imbalance(ctx: DiagnoseContext) -> Diagnosis:
    data = _data(ctx)
    if data is None:
        return _no_setup("class_imbalance", ctx)
    counts = {int(k): v for k, v in (data.get("class_counts_train") or {}).items()}
    missing = [c for c in range(data.get("num_classes", 0)) if counts.get(c, 0) == 0]
    ratio = data.get("imbalance_ratio")
    findings = []
    if missing:
        findings.append(Finding("class_imbalance", "missing_classes", 0.95, {"missing": missing[:20]},
                                "Collect training samples for the missing classes, or drop them from the label set.",
                                f"{len(missing)} classes have no training sample"))
    elif ratio and ratio >= IMBALANCE_MODERATE:
        findings.append(Finding(
            "class_imbalance", "skewed_classes", 0.9 if ratio >= IMBALANCE_SEVERE else 0.6,
            {"imbalance_ratio": ratio, "class_counts_train": data.get("class_counts_train")},
            "Weight the loss by inverse class frequency or sample with a WeightedRandomSampler, and judge the "
            "model by per-class recall or macro-F1 rather than accuracy.",
            f"the largest training class is {ratio}× the smallest"))
    return Diagnosis("class_imbalance", ctx.run.run_id, findings,
                     probes={"imbalance_ratio": ratio, "class_counts_train": data.get("class_counts_train")})


def input_scaling(ctx: DiagnoseContext) -> Diagnosis:
    data = _data(ctx)
    if data is None:
        return _no_setup("input_scaling", ctx)
    lo, hi = data.get("input_min"), data.get("input_max")
    findings = []
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) and math.isfinite(hi):
        span, peak = hi - lo, max(abs(lo), abs(hi))
        if peak > INPUT_ABS_LIMIT or span > INPUT_SPAN_LIMIT:
            findings.append(Finding(
                "input_scaling", "unnormalized_inputs", 0.9 if peak > 100 * INPUT_ABS_LIMIT else 0.75,
                {"input_min": lo, "input_max": hi},
                "Normalise the inputs per channel (subtract the mean, divide by the standard deviation of the "
                "training set), e.g. in your dataset or with torchvision.transforms.v2.Normalize.",
                f"training inputs range {lo:.4g} … {hi:.4g}, far outside a normalised range"))
    return Diagnosis("input_scaling", ctx.run.run_id, findings, probes={"input_min": lo, "input_max": hi})


def overfitting(ctx: DiagnoseContext) -> Diagnosis:
    epochs = [e for e in ctx.metrics.get("epochs", []) if isinstance(e.get("val_loss"), (int, float))]
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


EVIDENCE_DETECTORS = {"data_leakage": data_leakage, "class_imbalance": class_imbalance,
                      "input_scaling": input_scaling, "overfitting": overfitting}
