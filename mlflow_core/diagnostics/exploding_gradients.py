"""exploding_gradients: the gradient-norm spikes the trainer's monitor recorded as anomalies.
Playbook: diagnostics/exploding_gradients.md."""

from __future__ import annotations

import math
import statistics

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding


def exploding_gradients(ctx: DiagnoseContext) -> Diagnosis:
    """The monitor flags a gradient norm far above its running median. Late in a healthy run that
    median is tiny (the model fits its data), and one hard batch stands far above it without anything
    exploding: a spike counts here only if it is also far above the gradients of the first epoch,
    the scale of a model that is still learning."""
    flagged = [a.model_dump(mode="json") for a in ctx.metrics.anomalies or [] if a.kind == "exploding"]
    factor = float((ctx.metrics.config.get("monitoring") or {}).get("explode_factor", 10.0))
    rows = [r for r in ctx.steps() if math.isfinite(r.get("grad_norm", math.nan))]
    first_epoch = min((r["epoch"] for r in rows), default=None)
    early = [r["grad_norm"] for r in rows if r["epoch"] == first_epoch]
    floor = factor * statistics.median(early) if early else 0.0
    norms = {int(r["step"]): r["grad_norm"] for r in rows}
    spikes = [a for a in flagged if norms.get(a["step"], math.inf) > floor]
    probes = {"flagged": len(flagged), "spikes": len(spikes), "first_epoch_median_grad_norm":
              round(floor / factor, 4) if early else None}
    sees = (f"one gradient norm above monitoring.explode_factor ({factor:g}) × both its running median and the "
            f"first epoch's median gradient norm ({floor / factor:.3g}), checked every step" if early else
            f"one gradient norm above monitoring.explode_factor ({factor:g}) × its running median")
    findings = []
    if spikes:
        findings.append(Finding(
            "exploding_gradients", "gradient_spikes", min(0.9, 0.6 + 0.1 * len(spikes)),
            {"spikes": len(spikes), "first": spikes[0], "last": spikes[-1],
             "first_epoch_median_grad_norm": probes["first_epoch_median_grad_norm"]},
            "Clip gradients (training.grad_clip_norm: 1.0) and lower training.learning_rate; check the inputs of "
            "the batches named below.",
            f"{len(spikes)} gradient-norm spikes; the first at step {spikes[0]['step']}: {spikes[0]['message']}"))
    elif flagged:
        probes["note"] = (f"{len(flagged)} spike(s) above the running median only: a converged model's gradients are "
                          "tiny, and one hard batch stands out of them; not above the first epoch's gradients")
    return Diagnosis("exploding_gradients", ctx.run.run_id, findings, probes=probes,
                     sensitivity={"exploding_gradients": sees})


DIAGNOSTIC = Diagnostic("exploding_gradients", exploding_gradients,
                        sees="one gradient norm above monitoring.explode_factor × its running median and × the first "
                             "epoch's median gradient norm (every step is checked)")
