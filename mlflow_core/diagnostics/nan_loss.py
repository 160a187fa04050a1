"""The nan_loss diagnostic: rank the causes of a non-finite loss from the run's evidence and the
probes, and name the fixes to try. Thresholds are stated in diagnostics/nan_loss.md."""

from __future__ import annotations

import math
from typing import Any

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.diagnostics.base import Diagnostic, TrialPlan
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.errors import UserInputError

UPDATE_RATIO_HIGH = 0.1  # a healthy first update changes a layer by about 1e-3..1e-2 of its norm
WEIGHT_GROWTH_HIGH = 10.0  # the last good weights are this many times their initial norm
GRAD_GROWTH_HIGH = 10.0  # the gradient norm grew this much over the steps before the failure
OVERFLOW_INPUT = 1e4  # an op fed values this large that overflows is a symptom of blown-up weights


def _grad_growth(nonfinite: dict[str, Any]) -> float | None:
    norms = [float(n) for _, n in nonfinite.get("recent_grad_norms", []) if isinstance(n, (int, float))]
    norms = [n for n in norms if math.isfinite(n) and n > 0]
    return norms[-1] / norms[0] if len(norms) >= 2 else None


def rank_causes(nonfinite: dict[str, Any], replay: dict[str, Any], scale: dict[str, Any]) -> list[Finding]:
    """The causes the replay of the failing step supports, most likely first: non-finite inputs, a
    learning rate too high (its three signals), an overflow in reduced precision, an unstable op."""
    lr = nonfinite.get("lr")
    common = {"step": nonfinite.get("step"), "epoch": nonfinite.get("epoch"), "lr": lr,
              "what": nonfinite.get("what"), "first_module": replay.get("first_module"),
              "forward_op": replay.get("forward_op"), "backward_op": replay.get("backward_op")}
    findings: list[Finding] = []
    if replay.get("inputs_nonfinite"):
        findings.append(Finding(
            "nan_loss", "nonfinite_inputs", 0.95,
            {**common, "nonfinite_values_in_batch": replay["inputs_nonfinite"]},
            "Clean the data: the offending batch holds NaN/Inf inputs. `wf phase setup` scans the dataset "
            "and names the samples; fix or drop them, or impute in your dataset code.",
            f"the offending batch contains {replay['inputs_nonfinite']} non-finite input values"))
    fired, lr_finding = _lr_signals(nonfinite, replay, scale, common)
    findings += [lr_finding] if lr_finding else []
    amp = _amp_overflow(replay, common)
    if amp is not None:
        findings = [f if f.cause != "lr_too_high" else Finding(
            f.diagnostic, f.cause, round(f.confidence - 0.25, 2), f.evidence, f.fix, f.explanation)
            for f in [*findings, amp]]
    op = replay.get("forward_op") or replay.get("backward_op")
    op_input = (replay.get("forward_op_detail") or {}).get("input_abs_max") or 0.0
    overflow = bool(fired) and op_input > OVERFLOW_INPUT  # not the op's fault: its inputs had already exploded
    if op and not replay.get("inputs_nonfinite") and not overflow and amp is None:
        where = replay.get("first_module") or "the loss function"
        findings.append(Finding(
            "nan_loss", "unstable_op", 0.3 if fired else 0.85,
            {**common, "op_detail": replay.get("forward_op_detail")},
            f"Guard `{op}` in {where}: add an epsilon (e.g. log(x + 1e-8)), clamp its input, or use the stable "
            "fused form (log_softmax + nll_loss, BCEWithLogits).",
            f"with finite inputs{' and moderate weights' if not fired else ''}, `{op}` "
            f"{'in ' + where + ' ' if replay.get('first_module') else ''}produced the first non-finite value"))
    return sorted(findings, key=lambda f: -f.confidence)


def _lr_signals(nonfinite: dict[str, Any], replay: dict[str, Any], scale: dict[str, Any],
                common: dict[str, Any]) -> tuple[list[str], Finding | None]:
    """Which of the three signals of a learning rate too high fired (the first update's size, the
    weights' growth, the gradient norm's growth), and the finding they make together."""
    lr = nonfinite.get("lr")
    weight_growth = (replay["weight_norm_last_good"] / scale["weight_norm_init"]
                     if scale.get("weight_norm_init") else None)
    grad_growth = _grad_growth(nonfinite)
    update_ratio = scale.get("max_update_ratio")
    signals = {
        "first_update_ratio": update_ratio is not None and update_ratio > UPDATE_RATIO_HIGH,
        "weight_growth": weight_growth is not None and weight_growth > WEIGHT_GROWTH_HIGH,
        "grad_growth": grad_growth is not None and grad_growth > GRAD_GROWTH_HIGH,
    }
    fired = [k for k, v in signals.items() if v]
    if not fired or replay.get("inputs_nonfinite"):
        return fired, None
    reasons = []
    if signals["first_update_ratio"]:
        reasons.append(f"at lr {lr:g} the first update would change a layer by {update_ratio:.3g}× its norm "
                       f"(threshold {UPDATE_RATIO_HIGH})")
    if signals["weight_growth"]:
        reasons.append(f"the weights grew to {weight_growth:.3g}× their initial norm before the failure")
    if signals["grad_growth"]:
        reasons.append(f"the gradient norm grew {grad_growth:.3g}× over the last steps")
    return fired, Finding(
        "nan_loss", "lr_too_high", {1: 0.7, 2: 0.9, 3: 0.95}[len(fired)],
        {**common, "max_update_ratio": update_ratio, "weight_growth": weight_growth,
         "grad_growth": grad_growth, "signals": fired},
        "Lower training.learning_rate (10× at a time; `wf diagnose nan_loss --fix` finds the largest that "
        "trains) or clip gradients with training.grad_clip_norm: 1.0.",
        "; ".join(reasons))


def _amp_overflow(replay: dict[str, Any], common: dict[str, Any]) -> Finding | None:
    """Non-finite under fp16 or bf16 autocast, finite in fp32: the reduced precision overflowed."""
    fp32_loss = replay.get("fp32_loss")
    if not (replay.get("precision") in ("fp16", "bf16") and not replay.get("inputs_nonfinite")
            and not math.isfinite(replay.get("replayed_loss", math.nan))
            and isinstance(fp32_loss, float) and math.isfinite(fp32_loss)):
        return None
    op = replay.get("forward_op")
    return Finding(
        "nan_loss", "amp_overflow", 0.9,
        {**common, "precision": replay["precision"], "fp32_loss": fp32_loss,
         "op_detail": replay.get("forward_op_detail")},
        "Keep large activations in range: train in bf16 (fp32's range) or fp32 (training.precision), or "
        "normalise the inputs and add normalisation layers; a GradScaler (training.grad_scaler) guards the "
        "gradients, not the forward pass. `wf diagnose nan_loss --fix` verifies the change by a trial run.",
        f"replayed under {replay['precision']} autocast the step is non-finite"
        + (f" (first at `{op}`)" if op else "") + f", while the same step in fp32 gives a finite loss "
        f"{fp32_loss:.4g}: the reduced precision overflowed")


def candidate_fixes(findings: list[Finding], lr: float) -> list[dict[str, Any]]:
    """Config changes to try, least invasive first: for an overflow in reduced precision, bf16 then
    fp32; otherwise clipping (keeps the LR), then LR ÷ 10^k."""
    causes = {f.cause for f in findings}
    if causes and causes <= {"nonfinite_inputs"}:
        return []  # a data problem: no config switch fixes it
    if findings and findings[0].cause in ("nonfinite_inputs", "unstable_op") and findings[0].confidence >= 0.8:
        return []  # the data or the code must change: clipping or a smaller LR would only hide it
    fixes: list[dict[str, Any]] = []
    if findings and findings[0].cause == "amp_overflow":
        if findings[0].evidence.get("precision") == "fp16":
            fixes.append({"label": "bf16 instead of fp16", "set": {"training.precision": "bf16"}})
        fixes.append({"label": "fp32 instead of mixed precision", "set": {"training.precision": "fp32"}})
    fixes.append({"label": "clip gradients at max_norm 1.0", "set": {"training.grad_clip_norm": 1.0}})
    for k in range(1, 6):
        fixes.append({"label": f"learning rate ÷ {10 ** k}", "set": {"training.learning_rate": lr / 10 ** k}})
    return fixes


def nan_loss(ctx: DiagnoseContext) -> Diagnosis:
    """Replay the failing step from the last good state the trainer saved, measure the first update's
    scale, and rank the causes."""
    # torch, for the replay: `wf diagnose --help` imports this module
    from mlflow_core.diagnostics.probes import replay_nonfinite, update_scale

    # torch, for the replay: `wf diagnose --help` imports this module
    from mlflow_core.training.checkpoint import load_checkpoint

    run, metrics = ctx.run, ctx.metrics
    nonfinite = metrics.nonfinite
    if not nonfinite:
        return Diagnosis("nan_loss", run.run_id, [], probes={
            "note": f"no sign of a NaN loss in run {run.run_id}: all {metrics.steps} steps finite"})
    if not nonfinite.dump:
        raise UserInputError(f"run {run.run_id} recorded a non-finite loss but saved no last good state to replay "
                             "(monitoring.nan_action: warn?).", hint="Run `wf phase baseline` again with nan_action: stop.")
    dump = load_checkpoint(ctx.run_dir / nonfinite.dump)
    cfg = WorkflowConfig.model_validate(dump["config"])  # the run's own resolved config
    shape, classes = tuple(metrics.data.input_shape), metrics.data.num_classes
    ctx.say(f"Replaying step {nonfinite.step} of {run.run_id} from its last good state")
    replay = replay_nonfinite(dump, cfg, ctx.project_root, classes, shape)
    scale = update_scale(dump, cfg, ctx.project_root, classes, shape)
    findings = rank_causes(nonfinite.model_dump(mode="json"), replay, scale)
    return Diagnosis("nan_loss", run.run_id, findings, probes={"replay": replay, "update_scale": scale})


def _fixes(diagnosis: Diagnosis, ctx: DiagnoseContext) -> list[dict[str, Any]]:
    return candidate_fixes(diagnosis.findings, ctx.run_config().training.learning_rate)


def _trial_steps(ctx: DiagnoseContext) -> int:
    """Past the failing step several times over: a fix must carry the run beyond where it broke."""
    return min(max(4 * (ctx.metrics.nonfinite.step + 1), 60), 400)


DIAGNOSTIC = Diagnostic("nan_loss", nan_loss, fixes=_fixes,
    sees="one non-finite loss or gradient norm (every step is checked)",
    trial=TrialPlan(steps=_trial_steps),
    # run by `auto` only on a run that failed on NaN; then its replay of the actual failure, not static
    # evidence, decides which fixes are tried
    applies=lambda ctx: ctx.metrics.nonfinite is not None, claims_fixes=True)
