"""Diagnostics of training dynamics: vanishing gradients, dead ReLUs, a stalled loss, underfitting.

Each reads the run's recorded evidence first (per-layer gradient norms, step losses, epochs) and
runs active probes (diagnostics/dynamics.py) only where the evidence raises the question.
Thresholds are stated in each playbook (diagnostics/<name>.md).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mlflow_core.diagnostics import Diagnosis, Finding
from mlflow_core.diagnostics.evidence_detectors import DiagnoseContext

VANISH_RATIO = 1e-3  # first-layer / last-layer gradient norm
VANISH_RMS = 1e-7  # RMS gradient of the first third of the weight layers
DEAD_FRACTION, DEAD_FRACTION_SEVERE = 0.5, 0.7  # a ReLU layer's share of units that never fire
STALL_MIN_DROP = 0.05  # the last tenth of the step losses must be 5 % below the first tenth
CHANCE_MARGIN = 0.1  # val accuracy within 10 % of the way from chance to perfect is "at chance"
LR_OFF_FACTOR = 30.0  # configured LR this far from the range test's suggestion
LR_TEST_MIN_DESCENT = 0.1  # the range test's loss must fall 10 % for its suggestion to count
LABEL_SIGNAL_MARGIN = 0.05  # real labels must beat permuted labels by this much val accuracy
UNDERFIT_TRAIN_ACCURACY = 0.6  # without a target: final train accuracy below this is underfitting
STILL_FALLING = 0.05  # the last 3 epochs' train loss 5 % below the 3 before: training was cut short
HEAVY_WEIGHT_DECAY, HEAVY_DROPOUT = 0.05, 0.5
SATURATING = {"Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softsign", "LogSigmoid"}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def vanishing_gradients(ctx: DiagnoseContext) -> Diagnosis:
    layers = ctx.metrics.get("layers") or {}
    names, numel, records = layers.get("names") or [], layers.get("numel") or [], layers.get("records") or []
    probes: dict[str, Any] = {"weight_layers": len(names), "records": len(records)}
    if len(names) < 3 or not records:
        probes["note"] = ("the run recorded no per-layer gradient norms, or the model has fewer than 3 weight "
                          "layers: nothing to compare")
        return Diagnosis("vanishing_gradients", ctx.run.run_id, [], probes=probes)
    early = max(1, len(names) // 3)
    ratios, early_rms, zero = [], [], 0
    for record in records:
        grads = [_num(g) for g in record["grad_norm"]]
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
    per_layer = records[-1]["grad_norm"]
    probes.update(first_last_ratio=ratio, early_grad_rms=rms, zero_gradient_records=zero,
                  layers=[{"name": n, "grad_norm": g} for n, g in zip(names, per_layer)],
                  at_step=records[-1]["step"])
    findings = []
    arch = ctx.metrics.get("architecture") or {}
    saturating = sorted(SATURATING & set(arch.get("activations") or {}))
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
                    "activations": arch.get("activations"), "normalization": arch.get("normalization")}
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


def dead_relu(ctx: DiagnoseContext) -> Diagnosis:
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
    classes = (ctx.metrics.get("data") or {}).get("num_classes")
    accs = [e["val_accuracy"] for e in ctx.metrics.get("epochs") or [] if _num(e.get("val_accuracy")) is not None]
    if classes and accs:
        chance = 1 / classes
        out.update(final_val_accuracy=accs[-1], chance_accuracy=round(chance, 4),
                   at_chance=max(accs) < chance + CHANCE_MARGIN * (1 - chance))
    return out


def convergence_stall(ctx: DiagnoseContext) -> Diagnosis:
    symptoms = stall_symptoms(ctx)
    probes: dict[str, Any] = {"symptoms": symptoms}
    if ctx.metrics.get("nonfinite"):
        probes["note"] = "the run ended on a non-finite loss: see `wf diagnose nan_loss`"
        return Diagnosis("convergence_stall", ctx.run.run_id, [], probes=probes)
    if not (symptoms["flat"] or symptoms["at_chance"]):
        probes["note"] = "the training loss fell and validation accuracy is above chance: no stall"
        return Diagnosis("convergence_stall", ctx.run.run_id, [], probes=probes)
    what = []
    if symptoms["flat"]:
        what.append(f"the training loss fell only {symptoms['relative_drop']:.1%} from the first to the last tenth "
                    f"of {symptoms['steps']} steps (threshold {STALL_MIN_DROP:.0%})")
    if symptoms["at_chance"]:
        what.append(f"validation accuracy peaked at {max(0.0, symptoms['final_val_accuracy']):.3f}, at chance "
                    f"({symptoms['chance_accuracy']:.3f} for {round(1 / symptoms['chance_accuracy'])} classes)")
    symptom_text = "; ".join(what)
    evidence = {k: v for k, v in symptoms.items() if k != "steps"}
    findings: list[Finding] = []
    for name, cause in (("vanishing_gradients", "vanishing_gradients"), ("dead_relu", "dead_units")):
        other = ctx.result(name)
        if other.findings and other.findings[0].cause != "no_gradient":
            top = other.findings[0]
            findings.append(Finding("convergence_stall", cause, round(top.confidence - 0.2, 2),
                                    {**evidence, name: top.evidence}, top.fix,
                                    f"{symptom_text}; {name.replace('_', ' ')}: {top.explanation}"))
    if findings:
        return Diagnosis("convergence_stall", ctx.run.run_id, findings, probes=probes)

    from mlflow_core.diagnostics.dynamics import shuffled_label_control, single_batch_overfit
    from mlflow_core.training.lr_finder import lr_range_test

    cfg, data = ctx.run_config(), ctx.data()
    lr = cfg.training.learning_rate
    sweep = lr_range_test(cfg, ctx.project_root, data, steps=100)
    probes["lr_range_test"] = sweep
    smoothed = sweep["smoothed"]
    descent = (1 - min(smoothed) / smoothed[0]) if smoothed and smoothed[0] > 0 else 0.0
    suggested = sweep.get("suggested_lr") if descent >= LR_TEST_MIN_DESCENT else None
    probes["lr_range_descent"] = round(descent, 4)
    lr_evidence = {**evidence, "learning_rate": lr, "suggested_lr": suggested, "lr_range_descent": descent,
                   "rule": sweep["rule"]}
    if suggested and lr < suggested / LR_OFF_FACTOR:
        findings.append(Finding(
            "convergence_stall", "lr_too_low", 0.85, lr_evidence,
            f"Raise training.learning_rate towards {suggested:.2g} (the range test's suggestion); "
            "`wf diagnose convergence_stall --fix` verifies it by a trial run.",
            f"{symptom_text}; the LR range test's loss falls fastest at lr {suggested:.2g}, "
            f"{suggested / lr:.3g}× the configured {lr:g} (threshold {LR_OFF_FACTOR:g}×)"))
    elif suggested and lr > suggested * LR_OFF_FACTOR:
        findings.append(Finding(
            "convergence_stall", "lr_too_high", 0.8, lr_evidence,
            f"Lower training.learning_rate towards {suggested:.2g}; `wf diagnose convergence_stall --fix` verifies "
            "it by a trial run.",
            f"{symptom_text}; the LR range test's loss falls fastest at lr {suggested:.2g}, "
            f"{lr / suggested:.3g}× below the configured {lr:g}: the updates overshoot"))
    else:
        overfit = single_batch_overfit(cfg, ctx.project_root, data)
        probes["single_batch_overfit"] = overfit
        if not overfit["fitted"]:
            findings.append(Finding(
                "convergence_stall", "model_cannot_fit", 0.75, {**evidence, "single_batch": overfit},
                "Give the model the capacity to fit its data (more channels or layers), then check its forward "
                "(a detached graph, a wrong output size, frozen weights) and the loss.",
                f"{symptom_text}; the model cannot even fit one batch of {overfit['batch']} samples in "
                f"{overfit['steps']} steps (loss {overfit['first_loss']:.3g} → {_fmt(overfit['last_loss'])}, "
                f"batch accuracy {overfit['batch_accuracy']:.2f})"))
        else:
            steps = min(max(ctx.metrics.get("steps") or 0, 100), 300)
            control = shuffled_label_control(cfg, ctx.project_root, data, steps=steps)
            probes["shuffled_label_control"] = control
            if control["accuracy_margin"] < LABEL_SIGNAL_MARGIN:
                findings.append(Finding(
                    "convergence_stall", "labels_uninformative", 0.8,
                    {**evidence, "real_val_accuracy": control["real"]["val_accuracy"],
                     "shuffled_val_accuracy": control["shuffled"]["val_accuracy"], "steps": steps,
                     "single_batch": overfit},
                    "Check the labels: how they are read, their mapping to inputs (file order, sorting, joins), "
                    "and that the same mapping holds in train and val. A model cannot learn what the labels do "
                    "not carry.",
                    f"{symptom_text}; the model can memorise one batch, yet a {steps}-step control on permuted "
                    f"labels reaches val accuracy {control['shuffled']['val_accuracy']:.3f} and the real labels "
                    f"{control['real']['val_accuracy']:.3f}: the labels carry no signal this model can learn"))
            else:
                findings.append(Finding(
                    "convergence_stall", "slow_progress", 0.4, {**evidence, "single_batch": overfit},
                    "Train longer or with a warm-up and a schedule; compare learning rates with an LR range test.",
                    f"{symptom_text}; the model can fit one batch and the labels carry signal (control: real "
                    f"{control['real']['val_accuracy']:.3f} against permuted {control['shuffled']['val_accuracy']:.3f}), "
                    "so the run is slow rather than broken"))
    return Diagnosis("convergence_stall", ctx.run.run_id, findings, probes=probes)


def underfitting(ctx: DiagnoseContext) -> Diagnosis:
    m = ctx.metrics
    epochs = [e for e in m.get("epochs") or [] if _num(e.get("train_accuracy")) is not None]
    probes: dict[str, Any] = {"epochs": len(epochs)}
    if m.get("nonfinite") or not epochs:
        probes["note"] = "no completed epoch to judge" if not epochs else "the run ended on a non-finite loss"
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    symptoms = stall_symptoms(ctx)
    if symptoms["flat"] or symptoms["at_chance"]:
        probes["note"] = "the model did not learn at all: see `wf diagnose convergence_stall`"
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    last = epochs[-1]
    train_acc, val_acc = last["train_accuracy"], _num(last.get("val_accuracy"))
    gap = train_acc - val_acc if val_acc is not None else 0.0
    best, target = m.get("best") or {}, m.get("target")
    metric = m.get("metric", "val_loss")
    train_loss = _num(last.get("train_loss"))
    # the training side of the metric, where training measures it (F1, MCC and IoU are validation-only)
    counterpart = {"val_accuracy": ("accuracy", train_acc), "val_loss": ("loss", train_loss)}.get(metric)
    if target is not None and _num(best.get("value")) is not None and counterpart is not None:
        maximize = m.get("mode") == "max"
        missed = best["value"] < target if maximize else best["value"] > target
        # high bias: the model misses the target on its own training data too
        train_name, train_value = counterpart
        train_missed = train_value is not None and (train_value < target if maximize else train_value > target)
        yardstick = (f"the best {metric} {best['value']:.4g} misses validation.target {target:g}, and the training "
                     f"{train_name} {_fmt(train_value)} misses it too")
    else:
        missed = train_missed = train_acc < UNDERFIT_TRAIN_ACCURACY
        why_not = ("no validation.target set" if target is None else
                   f"training does not measure {metric}, so the target is not compared")
        yardstick = f"the final train accuracy {train_acc:.3f} is below {UNDERFIT_TRAIN_ACCURACY} ({why_not})"
    probes.update(train_accuracy=train_acc, val_accuracy=val_acc, accuracy_gap=round(gap, 4), missed_target=missed,
                  train_missed_target=train_missed)
    if not (missed and train_missed):
        return Diagnosis("underfitting", ctx.run.run_id, [], probes=probes)
    cfg = m.get("config") or {}
    training, model = cfg.get("training") or {}, cfg.get("model") or {}
    losses = [_num(e.get("train_loss")) for e in epochs]
    k = min(3, len(losses) // 2)
    recent, before = losses[-k:] if k else [], losses[-2 * k:-k] if k else []
    trend = ((sum(before) - sum(recent)) / sum(before) if k and None not in recent + before and sum(before) > 0
             else None)
    still_falling = len(losses) == 1 or (trend is not None and trend > STILL_FALLING)
    early_stopped = m.get("status") == "early_stopped"
    evidence = {"train_accuracy": train_acc, "val_accuracy": val_acc, "target": target, "best": best,
                "epochs": len(epochs), "parameters": m.get("parameters"),
                "last_train_losses": losses[-3:], "train_loss_trend": trend, "weight_decay": training.get("weight_decay"),
                "dropout": model.get("dropout")}
    why = f"{yardstick} (train − val accuracy {gap:+.3f}): high bias"
    findings = []
    if still_falling and not early_stopped:
        findings.append(Finding(
            "underfitting", "too_few_epochs", 0.75, evidence,
            "Train longer (training.epochs) or with a higher learning rate: the loss was still falling.",
            f"{why}; the training loss was still falling when the run ended after {len(epochs)} epochs"))
    elif (training.get("weight_decay") or 0) >= HEAVY_WEIGHT_DECAY or (model.get("dropout") or 0) >= HEAVY_DROPOUT:
        findings.append(Finding(
            "underfitting", "over_regularized", 0.7, evidence,
            "Lower training.weight_decay and model.dropout: the regulariser holds the model back.",
            f"{why}; weight decay {training.get('weight_decay')} and dropout {model.get('dropout')} are heavy"))
    else:
        findings.append(Finding(
            "underfitting", "capacity_too_low", 0.7, evidence,
            "Use a larger model (more channels or layers, e.g. model.channels or resnet18) and train until the "
            "training loss stops falling.",
            f"{why}; the training loss has levelled off with {m.get('parameters')} parameters"))
    return Diagnosis("underfitting", ctx.run.run_id, findings, probes=probes)


DYNAMICS_DETECTORS = {"vanishing_gradients": vanishing_gradients, "dead_relu": dead_relu,
                      "convergence_stall": convergence_stall, "underfitting": underfitting}
