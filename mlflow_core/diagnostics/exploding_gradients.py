"""exploding_gradients: the gradient-norm spikes the trainer's monitor recorded as anomalies.
Playbook: diagnostics/exploding_gradients.md."""

from __future__ import annotations

from mlflow_core.diagnostics.base import Diagnosis, Diagnostic, Finding
from mlflow_core.diagnostics.context import DiagnoseContext


def exploding_gradients(ctx: DiagnoseContext) -> Diagnosis:
    spikes = [a.model_dump(mode="json") for a in ctx.metrics.anomalies or [] if a.kind == "exploding"]
    findings = []
    if spikes:
        findings.append(Finding(
            "exploding_gradients", "gradient_spikes", min(0.9, 0.6 + 0.1 * len(spikes)),
            {"spikes": len(spikes), "first": spikes[0], "last": spikes[-1]},
            "Clip gradients (training.grad_clip_norm: 1.0) and lower training.learning_rate; check the inputs of "
            "the batches named below.",
            f"{len(spikes)} gradient-norm spikes; the first at step {spikes[0]['step']}: {spikes[0]['message']}"))
    return Diagnosis("exploding_gradients", ctx.run.run_id, findings, probes={"spikes": len(spikes)})


DIAGNOSTIC = Diagnostic("exploding_gradients", "gradient-norm spikes during training", exploding_gradients,
                        sees="one gradient norm above monitoring.explode_factor × its running median (every step is checked)")
