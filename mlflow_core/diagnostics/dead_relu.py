"""dead_relu: ReLU units that never fire on training samples, probed on the last weights and at
initialisation; a fix must leave no layer more than half dead after its trial.
Playbook and thresholds: diagnostics/dead_relu.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import PROBE_SAMPLES, Diagnostic, TrialPlan
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.diagnostics.fixes import learning_rate_fixes

DEAD_FRACTION, DEAD_FRACTION_SEVERE = 0.5, 0.7  # a ReLU layer's share of units that never fire


def dead_relu(ctx: DiagnoseContext) -> Diagnosis:
    # torch, for the probes: `wf diagnose --help` imports this module
    from mlflow_core.diagnostics.dynamics import dead_units, fresh_model, probe_batches, run_model

    cfg, data = ctx.run_config(), ctx.data()
    batches = probe_batches(cfg, data)
    model, source = run_model(cfg, ctx.project_root, data, ctx.run_dir, ctx.metrics)
    trained = dead_units(model, batches)
    at_init = {layer["layer"]: layer for layer in dead_units(fresh_model(cfg, ctx.project_root, data), batches)}
    samples = sum(len(t) for _, t in batches)
    probes: dict[str, Any] = {"weights": source, "samples": samples, "layers": trained,
                              "at_init": list(at_init.values())}
    judged = [layer for layer in trained if layer["units"] >= 4]
    if not judged:
        probes["note"] = "the model calls no ReLU (nn.ReLU or torch.relu): nothing to measure"
        return Diagnosis("dead_relu", ctx.run.run_id, [], probes=probes)
    worst = max(judged, key=lambda layer: layer["dead_fraction"])
    findings = []
    if worst["dead_fraction"] > DEAD_FRACTION:
        confidence = 0.9 if worst["dead_fraction"] > DEAD_FRACTION_SEVERE else 0.75
        init = at_init.get(worst["layer"], {}).get("dead_fraction")
        evidence = {"layer": worst["layer"], "dead_fraction": worst["dead_fraction"], "units": worst["units"],
                    "dead_fraction_at_init": init, "weights": source, "samples": samples,
                    "layers_over_threshold": sum(1 for layer in judged if layer["dead_fraction"] > DEAD_FRACTION)}
        what = (f"{worst['dead']} of {worst['units']} units ({worst['dead_fraction']:.0%}) of `{worst['layer']}` never "
                f"fire on {samples} training samples (threshold {DEAD_FRACTION:.0%})")
        if init is not None and init > DEAD_FRACTION:
            findings.append(Finding(
                "dead_relu", "dead_at_init", confidence, evidence,
                "Fix the initialisation: biases at zero (or slightly positive), Kaiming-normal weights; normalise "
                "the inputs; or use LeakyReLU/GELU, whose gradient is never exactly zero.",
                f"{what}; {init:.0%} were already dead at initialisation"))
        else:
            findings.append(Finding(
                "dead_relu", "died_in_training", confidence, evidence,
                "Lower training.learning_rate (large updates push units into the negative region for good), add "
                "BatchNorm before the ReLUs, or use LeakyReLU/GELU.",
                f"{what}; at initialisation {init:.0%} were" if init is not None else what))
    return Diagnosis("dead_relu", ctx.run.run_id, findings, probes=probes)


def dead_unit_judge(ctx: DiagnoseContext) -> Any:
    """A dead-ReLU trial passes when no layer of the trained model is more than half dead."""
    # torch, for the probes: `wf diagnose --help` imports this module
    from mlflow_core.diagnostics.dynamics import dead_units, probe_batches

    batches = probe_batches(ctx.run_config(), ctx.data())

    def judge(model: Any) -> tuple[bool, dict[str, Any]]:
        worst = max((layer["dead_fraction"] for layer in dead_units(model.cpu(), batches) if layer["units"] >= 4),
                    default=0.0)
        return worst <= DEAD_FRACTION, {"worst_dead_fraction": worst}
    return judge


DIAGNOSTIC = Diagnostic("dead_relu", dead_relu, fixes=learning_rate_fixes,
                        sees=f"a ReLU layer with {DEAD_FRACTION:.0%} of its units silent on {PROBE_SAMPLES} training "
                        "samples (a unit active on fewer than 1 input in "
                        f"{round(1 / (1 - 0.05 ** (1 / PROBE_SAMPLES)))} looks silent there 5 % of the time)",
                        trial=TrialPlan(judge=dead_unit_judge))
