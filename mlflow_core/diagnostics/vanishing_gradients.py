"""vanishing_gradients: the per-layer gradient norms the trainer records, first layers against last.
Playbook and thresholds: diagnostics/vanishing_gradients.md."""

from __future__ import annotations

import math
import statistics
from typing import Any

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext, number_or_none
from mlflow_core.diagnostics.findings import Diagnosis, Finding

VANISH_RATIO = 1e-3  # first-layer / last-layer gradient norm
VANISH_RMS = 1e-7  # RMS gradient of the first third of the weight layers
SATURATING = {"Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softsign", "LogSigmoid"}


def vanishing_gradients(ctx: DiagnoseContext) -> Diagnosis:
    layers = ctx.metrics.layers
    names, numel, records = layers.names, layers.numel, layers.records
    probes: dict[str, Any] = {"weight_layers": len(names), "records": len(records)}
    if len(names) < 3 or not records:
        probes["note"] = ("the run recorded no per-layer gradient norms, or the model has fewer than 3 weight "
                          "layers: nothing to compare")
        return Diagnosis("vanishing_gradients", ctx.run.run_id, [], probes=probes)
    early = max(1, len(names) // 3)
    ratios, early_rms, zero = [], [], 0
    for record in records:
        grads = [number_or_none(g) for g in record.grad_norm]
        if any(g is None for g in grads):
            continue
        rms = sum(g / math.sqrt(n) for g, n in zip(grads[:early], numel[:early])) / early
        if all(g == 0 for g in grads[:early]):
            zero += 1
            continue
        early_rms.append(rms)
        if grads[-1] > 0:
            ratios.append(grads[0] / grads[-1])
    ratio = statistics.median(ratios) if ratios else None
    rms = statistics.median(early_rms) if early_rms else None
    per_layer = records[-1].grad_norm
    probes.update(first_last_ratio=ratio, early_grad_rms=rms, zero_gradient_records=zero,
                  layers=[{"name": n, "grad_norm": g} for n, g in zip(names, per_layer)],
                  at_step=records[-1].step)
    findings = []
    arch = ctx.metrics.architecture
    saturating = sorted(SATURATING & set(arch.activations))
    if zero and zero >= len(records) / 2:
        findings.append(Finding(
            "vanishing_gradients", "no_gradient", 0.5, {"zero_gradient_records": zero, "records": len(records)},
            "No gradient reaches the first layers at all: look for dead ReLUs (`wf diagnose dead_relu`) or a "
            "graph cut in the model's forward (.detach(), .item(), numpy round-trips).",
            f"the first {early} weight layers received exactly zero gradient in {zero} of {len(records)} "
            "recorded steps"))
    elif (ratio is not None and ratio < VANISH_RATIO) or (rms is not None and rms < VANISH_RMS):
        severe = (ratio is not None and ratio < VANISH_RATIO / 100) or (rms is not None and rms < VANISH_RMS / 100)
        evidence = {"first_last_ratio": ratio, "early_grad_rms": rms, "first_layer": names[0], "last_layer": names[-1],
                    "activations": arch.activations, "normalization": arch.normalization}
        why = (f"the gradient norm of the first layer ({names[0]}) is {ratio:.2g}× the last layer's ({names[-1]})"
               if ratio is not None else f"the early layers' RMS gradient is {rms:.2g}")
        if saturating:
            findings.append(Finding(
                "vanishing_gradients", "saturating_activations", 0.9 if severe else 0.8, evidence,
                "Replace the saturating activations with ReLU/GELU, add normalisation layers (BatchNorm/LayerNorm) "
                "and initialise with Kaiming/Xavier init; residual connections for deep stacks.",
                f"{why} (thresholds: ratio < {VANISH_RATIO:g} or RMS < {VANISH_RMS:g}); the model uses "
                f"{', '.join(saturating)}, whose derivative is at most 0.25–1 and shrinks the signal at every layer"))
        else:
            findings.append(Finding(
                "vanishing_gradients", "deep_plain_network", 0.85 if severe else 0.75, evidence,
                "Add normalisation layers and residual connections, and check the initialisation "
                "(Kaiming for ReLU networks).",
                f"{why} (thresholds: ratio < {VANISH_RATIO:g} or RMS < {VANISH_RMS:g}) across "
                f"{len(names)} weight layers"))
    return Diagnosis("vanishing_gradients", ctx.run.run_id, findings, probes=probes)


DIAGNOSTIC = Diagnostic("vanishing_gradients", vanishing_gradients,
                        sees=f"first-layer gradients below {VANISH_RATIO:g} of the last layer's, or an RMS gradient below {VANISH_RMS:g}, on a training batch")
