"""bad_initialization: a first training loss far above that of uniform predictions.
Playbook and thresholds: diagnostics/bad_initialization.md."""

from __future__ import annotations

import math

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding

INIT_LOSS_FACTOR = 2.0  # a first loss above this many times ln(num_classes) means saturated outputs


def bad_initialization(ctx: DiagnoseContext) -> Diagnosis:
    classes = ctx.metrics.data.num_classes
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


DIAGNOSTIC = Diagnostic("bad_initialization", bad_initialization,
                        sees=f"a first loss above {INIT_LOSS_FACTOR:g}× ln(classes), the loss of an untrained model's uniform guess")
