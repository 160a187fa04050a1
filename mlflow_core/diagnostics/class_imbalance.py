"""class_imbalance: missing or heavily skewed training classes, from setup's class counts.
Playbook and thresholds: diagnostics/class_imbalance.md.

A skew counts only beyond what chance gives a balanced source of the same size: 40 samples over 10
classes differ by 3× by chance alone, 40,000 do not."""

from __future__ import annotations

import math

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext, needs_setup_data
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.workflow.facts import DataCheck
from mlflow_core.workflow.noise import (
    CHANCE_QUANTILE,
    chance_class_ratio,
    class_count_strength,
    weighed_confidence,
)

IMBALANCE_MODERATE, IMBALANCE_SEVERE = 3.0, 10.0  # largest / smallest training class


@needs_setup_data
def class_imbalance(ctx: DiagnoseContext, data: DataCheck) -> Diagnosis:
    counts = {int(k): v for k, v in data.class_counts_train.items()}
    missing = [c for c in range(data.num_classes) if counts.get(c, 0) == 0]
    ratio = data.imbalance_ratio
    samples = sum(counts.values())
    chance = chance_class_ratio(samples, data.num_classes)
    smallest = max(IMBALANCE_MODERATE, chance)
    strength = class_count_strength([counts.get(c, 0) for c in range(data.num_classes)])
    if math.isinf(chance):
        sees = (f"no skew: {samples} training samples over {data.num_classes} classes are so few that chance "
                f"alone leaves a class empty more than {1 - CHANCE_QUANTILE:.0%} of the time")
    else:
        sees = (f"a largest/smallest class ratio of {smallest:.3g}: a balanced source of {samples} samples over "
                f"{data.num_classes} classes exceeds {chance:.3g} by chance {1 - CHANCE_QUANTILE:.0%} of the time"
                + (f", and below {IMBALANCE_MODERATE:g} a skew rarely hurts training" if chance < IMBALANCE_MODERATE
                   else ""))
    findings = []
    if missing:  # observed: a class without a sample cannot be learned, whatever chance did
        findings.append(Finding("class_imbalance", "missing_classes", 0.95, {"missing": missing[:20]},
                                "Collect training samples for the missing classes, or drop them from the label set.",
                                f"{len(missing)} classes have no training sample"))
    elif ratio and ratio >= smallest:
        findings.append(Finding(
            "class_imbalance", "skewed_classes",
            weighed_confidence(0.9 if ratio >= IMBALANCE_SEVERE else 0.6, strength),
            {"imbalance_ratio": ratio, "chance_ratio": round(chance, 3), "class_counts_train": data.class_counts_train},
            "Weight the loss by inverse class frequency or sample with a WeightedRandomSampler, and judge the "
            "model by per-class recall or macro-F1 rather than accuracy.",
            f"the largest training class is {ratio}× the smallest, where a balanced source of {samples} samples "
            f"reaches {chance:.3g}× by chance", strength))
    return Diagnosis("class_imbalance", ctx.run.run_id, findings,
                     probes={"imbalance_ratio": ratio, "chance_ratio": None if math.isinf(chance) else round(chance, 3),
                             "count_strength": strength, "class_counts_train": data.class_counts_train},
                     sensitivity={"class_imbalance": sees})


DIAGNOSTIC = Diagnostic("class_imbalance", class_imbalance,
                        sees="a class ratio beyond what chance gives a balanced source of the same size")
