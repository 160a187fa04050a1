"""Config changes a short trial can verify, shared by the diagnostics whose causes they answer.
Torch-free: a diagnostic names its fixes at import; the trials run them (trials.py)."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis

# Learning-rate factors a short trial tries, per cause (after the LR range test's suggestion, if any)
LR_TRIALS = {"lr_too_low": (10, 100), "lr_too_high": (0.1, 0.01), "died_in_training": (0.1, 0.01)}


def learning_rate_fixes(diagnosis: Diagnosis, ctx: DiagnoseContext) -> list[dict[str, Any]]:
    """For a learning rate too low or too high (or units that died while training): the LR range test's
    suggestion when the evidence holds one, then the rate scaled by the cause's factors."""
    top = diagnosis.findings[0]
    if top.cause not in LR_TRIALS:
        return []
    lr = ctx.run_config().training.learning_rate
    candidates = []
    suggested = top.evidence.get("suggested_lr")
    if suggested:
        candidates.append({"label": f"learning rate {suggested:.3g} (the LR range test's suggestion)",
                           "set": {"training.learning_rate": float(f"{suggested:.3g}")}})
    for factor in LR_TRIALS[top.cause]:
        candidates.append({"label": f"learning rate × {factor:g}", "set": {"training.learning_rate": lr * factor}})
    return candidates
