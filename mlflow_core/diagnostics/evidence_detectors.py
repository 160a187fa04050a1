"""Diagnostics decided from recorded evidence alone (setup's data facts, the run's epochs): no torch.
Thresholds are stated in each playbook (diagnostics/<name>.md)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_core.diagnostics import Diagnosis, Finding
from mlflow_core.workflow.state import RunRecord

IMBALANCE_MODERATE, IMBALANCE_SEVERE = 3.0, 10.0  # largest / smallest training class
INPUT_ABS_LIMIT, INPUT_SPAN_LIMIT = 10.0, 20.0  # normalised inputs sit within about ±10
OVERFIT_VAL_RISE, OVERFIT_ACC_GAP = 0.10, 0.05  # val loss 10 % above its best; train-val accuracy gap
DATA_WAIT_HIGH = 0.20  # share of training time spent waiting for the loader, with the GPU under-used
CPU_DATA_WAIT_HIGH = 0.30  # on the CPU the model step is slow, so a loader this slow is the bottleneck
SMALL_BATCH = 128  # below this, a GPU is rarely kept busy by a small model
INIT_LOSS_FACTOR = 2.0  # a first loss above this many times ln(num_classes) means saturated outputs


@dataclass
class DiagnoseContext:
    project_root: Path
    run: RunRecord
    run_dir: Path
    metrics: dict[str, Any]
    setup_facts: dict[str, Any]  # .wf/evidence/setup.json facts ({} if setup never ran)
    detectors: dict[str, Callable[[DiagnoseContext], Diagnosis]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # probes and results shared by detectors

    def result(self, name: str) -> Diagnosis:
        """Another detector's diagnosis of this run, computed once."""
        key = f"diagnosis:{name}"
        if key not in self.cache:
            self.cache[key] = self.detectors[name](self)
        return self.cache[key]

    def run_config(self) -> Any:
        """The run's own resolved config (as it trained), not today's training_config.yaml."""
        if "config" not in self.cache:
            from mlflow_core.config.schema import WorkflowConfig
            raw = self.metrics.get("config")
            if raw is None:
                from mlflow_core.config.loader import load_config
                self.cache["config"] = load_config(self.project_root / "training_config.yaml")
            else:
                self.cache["config"] = WorkflowConfig.model_validate(raw)
        return self.cache["config"]

    def data(self) -> Any:
        if "data" not in self.cache:
            from mlflow_core.training.augment import with_augmentation
            from mlflow_core.training.data import build_data
            self.cache["data"] = with_augmentation(build_data(self.run_config(), self.project_root),
                                                   self.run_config().augmentation)
        return self.cache["data"]

    def step_losses(self, finite: bool = True) -> list[float]:
        """The per-step training losses of logs/steps.csv (read once), finite ones only by default."""
        if "step_losses" not in self.cache:
            import csv
            losses: list[float] = []
            try:
                with (self.run_dir / "logs" / "steps.csv").open(encoding="utf-8") as f:
                    for row in csv.DictReader(f):
                        try:
                            losses.append(float(row["loss"]))
                        except (KeyError, TypeError, ValueError):
                            continue
            except OSError:
                pass
            self.cache["step_losses"] = losses
        losses = self.cache["step_losses"]
        return [v for v in losses if math.isfinite(v)] if finite else losses


def needs_setup_data(detector: Callable[[DiagnoseContext, dict[str, Any]], Diagnosis]
                     ) -> Callable[[DiagnoseContext], Diagnosis]:
    """For detectors that read setup's data facts: without them, no finding and what to run."""
    name = detector.__name__

    @functools.wraps(detector)
    def wrapped(ctx: DiagnoseContext) -> Diagnosis:
        data = ctx.setup_facts.get("data")
        if not (isinstance(data, dict) and "train_size" in data):
            return Diagnosis(name, ctx.run.run_id, [], probes={
                "note": "no data facts recorded: run `wf phase setup`, which scans the data, then diagnose again"})
        return detector(ctx, data)
    return wrapped


@needs_setup_data
def data_leakage(ctx: DiagnoseContext, data: dict[str, Any]) -> Diagnosis:
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


@needs_setup_data
def class_imbalance(ctx: DiagnoseContext, data: dict[str, Any]) -> Diagnosis:
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


@needs_setup_data
def input_scaling(ctx: DiagnoseContext, data: dict[str, Any]) -> Diagnosis:
    lo, hi = data.get("input_min"), data.get("input_max")
    findings = []
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) and math.isfinite(hi):
        span, peak = hi - lo, max(abs(lo), abs(hi))
        if peak > INPUT_ABS_LIMIT or span > INPUT_SPAN_LIMIT:
            findings.append(Finding(
                "input_scaling", "unnormalized_inputs", 0.9 if peak > 100 * INPUT_ABS_LIMIT else 0.75,
                {"input_min": lo, "input_max": hi},
                "Normalise the inputs per channel with the training set's mean and standard deviation: set "
                "data.normalize: per_channel (`wf diagnose input_scaling --fix` verifies it by a trial run), or "
                "normalise in your dataset (torchvision.transforms.v2.Normalize).",
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


def resource_inefficiency(ctx: DiagnoseContext) -> Diagnosis:
    m = ctx.metrics
    gpu = m.get("gpu") or {}
    epochs = m.get("epochs") or []
    total = sum(e.get("duration_s") or 0 for e in epochs)
    wait = (sum((e.get("data_wait_fraction") or 0) * (e.get("duration_s") or 0) for e in epochs) / total
            if total else None)
    probes = {"device": m.get("device"), "gpu_p50": gpu.get("p50"), "gpu_mean": gpu.get("mean"),
              "data_wait_fraction": wait, "batch_size": m.get("batch_size"), "num_workers": m.get("num_workers")}
    target = gpu.get("target_percent", 60)
    if not gpu.get("available") or str(m.get("device", "")).startswith("cpu") or gpu.get("p50") is None:
        findings = []
        if wait is not None and wait > CPU_DATA_WAIT_HIGH:
            loader = _throughput_probe(ctx)
            probes["throughput"] = loader
            ratio = loader.get("loader_to_model") if loader else None
            confirmed = ratio is None or ratio > 1
            if confirmed:
                findings.append(Finding(
                    "resource_inefficiency", "dataloader_bound", 0.85 if ratio else 0.7, {**probes},
                    "Raise data.num_workers (one per free core), and store inputs in a format that is cheap to "
                    "decode; cache decoded samples when they fit in memory.",
                    f"{wait:.0%} of training time waits for the data loader (threshold {CPU_DATA_WAIT_HIGH:.0%})"
                    + (f"; alone, the loader needs {ratio:.1f}× the time of a training step per batch" if ratio else "")))
        if not findings:
            probes["note"] = ("the run did not train on an NVIDIA GPU, and the data loader kept up: "
                              "nothing to improve")
        return Diagnosis("resource_inefficiency", ctx.run.run_id, findings, probes=probes)
    findings = []
    if gpu["p50"] < target:
        evidence = {**probes, "target_percent": target}
        low = f"median GPU utilization {gpu['p50']:.0f} % is below {target:.0f} %"
        if wait is not None and wait > DATA_WAIT_HIGH:
            findings.append(Finding("resource_inefficiency", "dataloader_bound", 0.85, evidence,
                                    "Raise data.num_workers, keep pin_memory on, and store inputs in a format that "
                                    "is cheap to decode (uncompressed arrays, or one file per shard).",
                                    f"{low}, and {wait:.0%} of training time waits for the data loader"))
        elif (m.get("batch_size") or SMALL_BATCH) < SMALL_BATCH:
            findings.append(Finding("resource_inefficiency", "batch_too_small", 0.7, evidence,
                                    "Double training.batch_size until memory runs short (scale the learning rate "
                                    "with it).", f"{low} with batch size {m.get('batch_size')}"))
        else:
            findings.append(Finding("resource_inefficiency", "model_too_small", 0.6, evidence,
                                    "A larger model or batch uses the GPU better; or train this one on a smaller GPU.",
                                    f"{low} although the loader keeps up and the batch is {m.get('batch_size')}"))
    return Diagnosis("resource_inefficiency", ctx.run.run_id, findings, probes=probes)


def _throughput_probe(ctx: DiagnoseContext) -> dict[str, Any] | None:
    """Loader-only against model-only time per batch (imports torch); None where it cannot run."""
    from mlflow_core.errors import WfError
    try:
        from mlflow_core.diagnostics.dynamics import throughput
        return throughput(ctx.run_config(), ctx.project_root, ctx.data())
    except (ImportError, WfError):  # no torch, or the data is gone since the run
        return None


def bad_initialization(ctx: DiagnoseContext) -> Diagnosis:
    classes = (ctx.metrics.get("data") or {}).get("num_classes")
    losses = ctx.step_losses(finite=False)
    first = losses[0] if losses else None
    probes = {"first_loss": first, "ln_num_classes": math.log(classes) if classes else None}
    findings = []
    if first is not None and classes and math.isfinite(first) and first > INIT_LOSS_FACTOR * math.log(classes):
        findings.append(Finding(
            "bad_initialization", "saturated_outputs", 0.8, {**probes, "factor": first / math.log(classes)},
            "Initialise the last layer small (e.g. zero its weights and bias) so the first predictions are near "
            "uniform; check for a missing normalisation of inputs or of the logits.",
            f"the first training loss {first:.3g} is {first / math.log(classes):.1f}× ln({classes}) = "
            f"{math.log(classes):.3g}, the loss of uniform predictions"))
    return Diagnosis("bad_initialization", ctx.run.run_id, findings, probes=probes)


def exploding_gradients(ctx: DiagnoseContext) -> Diagnosis:
    spikes = [a for a in ctx.metrics.get("anomalies") or [] if a.get("kind") == "exploding"]
    findings = []
    if spikes:
        findings.append(Finding(
            "exploding_gradients", "gradient_spikes", min(0.9, 0.6 + 0.1 * len(spikes)),
            {"spikes": len(spikes), "first": spikes[0], "last": spikes[-1]},
            "Clip gradients (training.grad_clip_norm: 1.0) and lower training.learning_rate; check the inputs of "
            "the batches named below.",
            f"{len(spikes)} gradient-norm spikes; the first at step {spikes[0]['step']}: {spikes[0]['message']}"))
    return Diagnosis("exploding_gradients", ctx.run.run_id, findings, probes={"spikes": len(spikes)})


EVIDENCE_DETECTORS = {"data_leakage": data_leakage, "class_imbalance": class_imbalance,
                      "input_scaling": input_scaling, "overfitting": overfitting,
                      "resource_inefficiency": resource_inefficiency, "bad_initialization": bad_initialization,
                      "exploding_gradients": exploding_gradients}
