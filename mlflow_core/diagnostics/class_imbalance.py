"""class_imbalance: missing or heavily skewed training classes, from setup's class counts.
Playbook and thresholds: diagnostics/class_imbalance.md."""

from __future__ import annotations

from mlflow_core.diagnostics.base import Diagnosis, Diagnostic, Finding
from mlflow_core.diagnostics.context import DiagnoseContext, needs_setup_data
from mlflow_core.workflow.facts import DataCheck

IMBALANCE_MODERATE, IMBALANCE_SEVERE = 3.0, 10.0  # largest / smallest training class


@needs_setup_data
def class_imbalance(ctx: DiagnoseContext, data: DataCheck) -> Diagnosis:
    counts = {int(k): v for k, v in data.class_counts_train.items()}
    missing = [c for c in range(data.num_classes) if counts.get(c, 0) == 0]
    ratio = data.imbalance_ratio
    findings = []
    if missing:
        findings.append(Finding("class_imbalance", "missing_classes", 0.95, {"missing": missing[:20]},
                                "Collect training samples for the missing classes, or drop them from the label set.",
                                f"{len(missing)} classes have no training sample"))
    elif ratio and ratio >= IMBALANCE_MODERATE:
        findings.append(Finding(
            "class_imbalance", "skewed_classes", 0.9 if ratio >= IMBALANCE_SEVERE else 0.6,
            {"imbalance_ratio": ratio, "class_counts_train": data.class_counts_train},
            "Weight the loss by inverse class frequency or sample with a WeightedRandomSampler, and judge the "
            "model by per-class recall or macro-F1 rather than accuracy.",
            f"the largest training class is {ratio}× the smallest"))
    return Diagnosis("class_imbalance", ctx.run.run_id, findings,
                     probes={"imbalance_ratio": ratio, "class_counts_train": data.class_counts_train})


DIAGNOSTIC = Diagnostic("class_imbalance", "missing or skewed training classes", class_imbalance)
