"""input_scaling: training inputs far outside a normalised range, from setup's input statistics; the
fix (per-channel normalisation) must train at least as well as the unchanged config in a trial.
Playbook and thresholds: diagnostics/input_scaling.md."""

from __future__ import annotations

import math
from typing import Any

from mlflow_core.diagnostics.base import Diagnostic, TrialPlan
from mlflow_core.diagnostics.context import DiagnoseContext, needs_setup_data
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.workflow.facts import DataCheck

INPUT_ABS_LIMIT, INPUT_SPAN_LIMIT = 10.0, 20.0  # normalised inputs sit within about ±10


@needs_setup_data
def input_scaling(ctx: DiagnoseContext, data: DataCheck) -> Diagnosis:
    lo, hi = data.input_min, data.input_max
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


def _normalize(diagnosis: Diagnosis, ctx: DiagnoseContext) -> list[dict[str, Any]]:
    if diagnosis.findings[0].cause != "unnormalized_inputs":
        return []
    return [{"label": "normalise the inputs per channel", "set": {"data.normalize": "per_channel"}}]


# the fix removes out-of-range inputs by construction; the trial shows it trains as well
DIAGNOSTIC = Diagnostic("input_scaling", input_scaling, fixes=_normalize,
                        sees=f"inputs beyond ±{INPUT_ABS_LIMIT:g}, or spanning more than {INPUT_SPAN_LIMIT:g}, in setup's scan of the data",
                        trial=TrialPlan(reference=True))
