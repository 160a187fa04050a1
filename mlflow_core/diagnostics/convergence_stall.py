"""convergence_stall: a training loss that does not fall or validation at chance, explained by an LR
range test, a single-batch overfit and a shuffled-label control; a fix must make the loss fall 5 %.
Playbook and thresholds: diagnostics/convergence_stall.md."""

from __future__ import annotations

import math
from typing import Any

from mlflow_core.diagnostics.base import Diagnostic, TrialPlan, default_trial_steps
from mlflow_core.diagnostics.context import DiagnoseContext, fmt_value, number_or_none
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.diagnostics.fixes import learning_rate_fixes
from mlflow_core.workflow.noise import Z, beyond_chance, proportion_noise, run_at_chance

STALL_MIN_DROP = 0.05  # the last tenth of the step losses must be 5 % below the first tenth
CHANCE_MARGIN = 0.1  # val accuracy within 10 % of the way from chance to perfect is "at chance"
LR_OFF_FACTOR = 30.0  # configured LR this far from the range test's suggestion
LR_TEST_MIN_DESCENT = 0.1  # the range test's loss must fall 10 % for its suggestion to count
LABEL_SIGNAL_MARGIN = 0.05  # real labels must beat permuted labels by this much val accuracy


def stall_symptoms(ctx: DiagnoseContext) -> dict[str, Any]:
    """Is the training loss flat, or the validation accuracy at chance? (No torch.)"""
    losses = ctx.step_losses()
    out: dict[str, Any] = {"steps": len(losses), "flat": False, "at_chance": False}
    if len(losses) >= 20:
        k = max(1, len(losses) // 10)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        drop = (first - last) / first if first > 0 else 0.0
        out.update(first_tenth_loss=first, last_tenth_loss=last, relative_drop=round(drop, 4),
                   flat=drop < STALL_MIN_DROP)
    classes = ctx.metrics.data.num_classes
    accs = [e.val_accuracy for e in ctx.metrics.epochs if number_or_none(e.val_accuracy) is not None]
    if classes and accs:
        chance = 1 / classes
        # "above chance" must stand out of the noise of an accuracy at chance on this many samples
        weighed = beyond_chance(max(accs), classes, ctx.metrics.data.val_size)
        margin = max(CHANCE_MARGIN * (1 - chance), weighed.smallest)
        out.update(final_val_accuracy=accs[-1], chance_accuracy=round(chance, 4), chance_margin=round(margin, 4),
                   at_chance=max(accs) < chance + margin)
    return out


def _sensitivity(ctx: DiagnoseContext, symptoms: dict[str, Any]) -> dict[str, str]:
    parts = [f"a training loss that falls less than {STALL_MIN_DROP:.0%} from the first to the last tenth of "
             f"its {symptoms['steps']} steps" if symptoms["steps"] >= 20 else
             "no flat loss: fewer than 20 steps recorded"]
    if "chance_margin" in symptoms:
        parts.append(f"a best validation accuracy within {symptoms['chance_margin']:.1%} of chance "
                     f"({symptoms['chance_accuracy']:.1%}; {Z:g} standard errors of an accuracy at chance on "
                     f"{ctx.metrics.data.val_size} validation samples, or {CHANCE_MARGIN:.0%} of the way to perfect)")
    return {"convergence_stall": "; ".join(parts)}


def convergence_stall(ctx: DiagnoseContext) -> Diagnosis:
    """Measure the symptoms; explain them first by the gradient diagnostics, then by the probes:
    the LR range test, a single-batch overfit, a shuffled-label control (in that order)."""
    symptoms = stall_symptoms(ctx)
    probes: dict[str, Any] = {"symptoms": symptoms}
    sensitivity = _sensitivity(ctx, symptoms)
    if ctx.metrics.nonfinite:
        probes["note"] = "the run ended on a non-finite loss: see `wf diagnose nan_loss`"
        return Diagnosis("convergence_stall", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    if not (symptoms["flat"] or symptoms["at_chance"]):
        probes["note"] = "the training loss fell and validation accuracy is above chance: no stall"
        return Diagnosis("convergence_stall", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    if not symptoms["flat"] and run_at_chance(ctx.metrics):
        probes["note"] = ("the training loss fell and the training data is fitted, only validation sits at chance: "
                          "not a stall (`wf diagnose overfitting`: validation_at_chance)")
        return Diagnosis("convergence_stall", ctx.run.run_id, [], probes=probes, sensitivity=sensitivity)
    symptom_text = _symptom_text(symptoms)
    evidence = {k: v for k, v in symptoms.items() if k != "steps"}
    findings = _gradient_findings(ctx, evidence, symptom_text)
    if not findings:
        # torch, for the probes: `wf diagnose --help` imports this module
        from mlflow_core.training.lr_finder import lr_range_test

        cfg, data = ctx.run_config(), ctx.data()
        sweep = lr_range_test(cfg, ctx.project_root, data, steps=100)
        probes["lr_range_test"] = sweep
        finding = _lr_finding(cfg.training.learning_rate, sweep, probes, evidence, symptom_text)
        findings = [finding] if finding else [_fit_finding(ctx, cfg, data, probes, evidence, symptom_text)]
    return Diagnosis("convergence_stall", ctx.run.run_id, findings, probes=probes, sensitivity=sensitivity)


def _symptom_text(symptoms: dict[str, Any]) -> str:
    what = []
    if symptoms["flat"]:
        what.append(f"the training loss fell only {symptoms['relative_drop']:.1%} from the first to the last tenth "
                    f"of {symptoms['steps']} steps (threshold {STALL_MIN_DROP:.0%})")
    if symptoms["at_chance"]:
        what.append(f"validation accuracy peaked at {max(0.0, symptoms['final_val_accuracy']):.3f}, at chance "
                    f"({symptoms['chance_accuracy']:.3f} for {round(1 / symptoms['chance_accuracy'])} classes)")
    return "; ".join(what)


def _gradient_findings(ctx: DiagnoseContext, evidence: dict[str, Any], symptom_text: str) -> list[Finding]:
    """A stall that vanishing gradients or dead units explain, as those diagnostics found them."""
    findings = []
    for name, cause in (("vanishing_gradients", "vanishing_gradients"), ("dead_relu", "dead_units")):
        other = ctx.result(name)
        if other.findings and other.findings[0].cause != "no_gradient":
            top = other.findings[0]
            findings.append(Finding("convergence_stall", cause, round(top.confidence - 0.2, 2),
                                    {**evidence, name: top.evidence}, top.fix,
                                    f"{symptom_text}; {name.replace('_', ' ')}: {top.explanation}"))
    return findings


def _lr_finding(lr: float, sweep: dict[str, Any], probes: dict[str, Any], evidence: dict[str, Any],
                symptom_text: str) -> Finding | None:
    """A configured learning rate LR_OFF_FACTOR× away from where the range test's loss falls fastest."""
    smoothed = sweep["smoothed"]
    descent = (1 - min(smoothed) / smoothed[0]) if smoothed and smoothed[0] > 0 else 0.0
    suggested = sweep.get("suggested_lr") if descent >= LR_TEST_MIN_DESCENT else None
    probes["lr_range_descent"] = round(descent, 4)
    lr_evidence = {**evidence, "learning_rate": lr, "suggested_lr": suggested, "lr_range_descent": descent,
                   "rule": sweep["rule"]}
    if suggested and lr < suggested / LR_OFF_FACTOR:
        return Finding(
            "convergence_stall", "lr_too_low", 0.85, lr_evidence,
            f"Raise training.learning_rate towards {suggested:.2g} (the range test's suggestion); "
            "`wf diagnose convergence_stall --fix` verifies it by a trial run.",
            f"{symptom_text}; the LR range test's loss falls fastest at lr {suggested:.2g}, "
            f"{suggested / lr:.3g}× the configured {lr:g} (threshold {LR_OFF_FACTOR:g}×)")
    if suggested and lr > suggested * LR_OFF_FACTOR:
        return Finding(
            "convergence_stall", "lr_too_high", 0.8, lr_evidence,
            f"Lower training.learning_rate towards {suggested:.2g}; `wf diagnose convergence_stall --fix` verifies "
            "it by a trial run.",
            f"{symptom_text}; the LR range test's loss falls fastest at lr {suggested:.2g}, "
            f"{lr / suggested:.3g}× below the configured {lr:g}: the updates overshoot")
    return None


def _fit_finding(ctx: DiagnoseContext, cfg: Any, data: Any, probes: dict[str, Any], evidence: dict[str, Any],
                 symptom_text: str) -> Finding:
    """Can the model fit one batch? If so, do the labels carry signal (real against permuted)?"""
    # torch, for the probes: `wf diagnose --help` imports this module
    from mlflow_core.diagnostics.dynamics import single_batch_overfit

    overfit = single_batch_overfit(cfg, ctx.project_root, data)
    probes["single_batch_overfit"] = overfit
    if not overfit["fitted"]:
        return Finding(
            "convergence_stall", "model_cannot_fit", 0.75, {**evidence, "single_batch": overfit},
            "Give the model the capacity to fit its data (more channels or layers), then check its forward "
            "(a detached graph, a wrong output size, frozen weights) and the loss.",
            f"{symptom_text}; the model cannot even fit one batch of {overfit['batch']} samples in "
            f"{overfit['steps']} steps (loss {overfit['first_loss']:.3g} → {fmt_value(overfit['last_loss'])}, "
            f"batch accuracy {overfit['batch_accuracy']:.2f})")
    return _label_finding(ctx, cfg, data, probes, {**evidence, "single_batch": overfit}, symptom_text)


def _label_finding(ctx: DiagnoseContext, cfg: Any, data: Any, probes: dict[str, Any], evidence: dict[str, Any],
                   symptom_text: str) -> Finding:
    # torch, for the probes: `wf diagnose --help` imports this module
    from mlflow_core.diagnostics.dynamics import shuffled_label_control

    steps = default_trial_steps(ctx)
    control = shuffled_label_control(cfg, ctx.project_root, data, steps=steps)
    probes["shuffled_label_control"] = control
    real, shuffled = control["real"]["val_accuracy"], control["shuffled"]["val_accuracy"]
    # real labels must beat permuted ones by more than the noise of two accuracies on the val set
    n_val = ctx.metrics.data.val_size
    signal_floor = max(LABEL_SIGNAL_MARGIN, Z * math.hypot(proportion_noise(real, n_val),
                                                           proportion_noise(shuffled, n_val)))
    probes["label_signal_floor"] = round(signal_floor, 4)
    if control["accuracy_margin"] < signal_floor:
        single_batch = evidence.pop("single_batch")
        return Finding(
            "convergence_stall", "labels_uninformative", 0.8,
            {**evidence, "real_val_accuracy": real, "shuffled_val_accuracy": shuffled, "steps": steps,
             "single_batch": single_batch},
            "Check the labels: how they are read, their mapping to inputs (file order, sorting, joins), "
            "and that the same mapping holds in train and val. A model cannot learn what the labels do "
            "not carry.",
            f"{symptom_text}; the model can memorise one batch, yet a {steps}-step control on permuted "
            f"labels reaches val accuracy {shuffled:.3f} and the real labels "
            f"{real:.3f}: the labels carry no signal this model can learn")
    return Finding(
        "convergence_stall", "slow_progress", 0.4, evidence,
        "Train longer or with a warm-up and a schedule; compare learning rates with an LR range test.",
        f"{symptom_text}; the model can fit one batch and the labels carry signal (control: real "
        f"{real:.3f} against permuted {shuffled:.3f}), "
        "so the run is slow rather than broken")


DIAGNOSTIC = Diagnostic("convergence_stall", convergence_stall,
                        fixes=learning_rate_fixes, trial=TrialPlan(min_drop=STALL_MIN_DROP))
