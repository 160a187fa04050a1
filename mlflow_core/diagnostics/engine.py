"""`wf diagnose NAME`: pick the run, probe, rank causes, optionally try fixes, write the report and
a suggested config. Never edits the user's config."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from mlflow_core.diagnostics import DIAGNOSTICS, Diagnosis
from mlflow_core.diagnostics.dynamics_detectors import DYNAMICS_DETECTORS
from mlflow_core.diagnostics.evidence_detectors import EVIDENCE_DETECTORS, DiagnoseContext
from mlflow_core.errors import UserInputError
from mlflow_core.reports.diagnosis import read_run_metrics, write_diagnosis_report
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.project import Project, safe_name
from mlflow_core.workflow.state import RunRecord, load_state, project_lock, save_state


def _pick_run(project: Project, run_id: str | None) -> RunRecord:
    """The run named, else the latest run that recorded metrics."""
    state = load_state(project)
    if run_id is not None:
        run = state.run(safe_name(run_id, "run id"))
        if run is None:
            raise UserInputError(f"no run {run_id!r} in .wf/state.json.", hint="`wf status` lists the runs.")
        return run
    for run in reversed(state.runs):
        if (project.root / run.dir / "logs" / "metrics.json").is_file():
            return run
    raise UserInputError("no training run is recorded yet: nothing to diagnose.", hint="Run `wf phase baseline`.")


# every diagnostic but nan_loss, which replays the failure and is run by name or when a run failed on NaN
DETECTORS = {**EVIDENCE_DETECTORS, **DYNAMICS_DETECTORS}

# Learning-rate factors a short trial tries, per cause (after the LR range test's suggestion, if any)
REFERENCE_TOLERANCE = 0.05  # a fix trial's last-tenth loss may exceed the unchanged config's by 5 %
LR_TRIALS = {"lr_too_low": (10, 100), "lr_too_high": (0.1, 0.01), "died_in_training": (0.1, 0.01)}


def diagnose(project: Project, name: str, run_id: str | None = None, fix: bool = False,
             on_message: Callable[[str], None] | None = None) -> Diagnosis:
    """`wf diagnose NAME`: under the project lock, diagnose and record it in the history."""
    _check_name(name)
    with project_lock(project, f"wf diagnose {name}"):
        run = _pick_run(project, run_id)
        diagnosis = run_diagnosis(project, name, run, fix, on_message)
        state = load_state(project)
        state.record("diagnosis", diagnostic=name, run_id=run.run_id,
                     findings=[{"cause": f.cause, "confidence": f.confidence} for f in diagnosis.findings],
                     verified_fix=verified_fix(diagnosis), report=diagnosis.report)
        save_state(project, state)
        return diagnosis


def verified_fix(diagnosis: Diagnosis) -> str | None:
    return next((t["label"] for t in diagnosis.trials if t.get("winner")), None)


def run_diagnosis(project: Project, name: str, run: RunRecord, fix: bool = False,
                  on_message: Callable[[str], None] | None = None) -> Diagnosis:
    """Diagnose `run` and write the report (and a suggested config); the caller holds the lock."""
    say = on_message or (lambda _m: None)
    _check_name(name)
    run_dir = project.inside(run.dir)
    metrics = read_run_metrics(run_dir)
    ctx = DiagnoseContext(project.root, run, run_dir, metrics, _setup_facts(project), DETECTORS)
    if name == "auto":
        diagnosis = _diagnose_auto(project, ctx, fix, say)
    elif name == "nan_loss":
        diagnosis = _diagnose_nan_loss(project, run, run_dir, metrics, fix, say)
    else:
        say(f"Diagnosing {name} on run {run.run_id}")
        diagnosis = ctx.result(name)
        if fix and diagnosis.findings:
            _try_fixes(project, ctx, diagnosis, say)
    diagnosis.report = write_diagnosis_report(project, diagnosis.to_json(), run_dir)["path"]
    return diagnosis


def _check_name(name: str) -> None:
    if name not in DIAGNOSTICS and name != "auto":
        raise UserInputError(f"unknown diagnostic {name!r}; diagnostics: auto, {', '.join(DIAGNOSTICS)}.",
                             hint="`wf diagnose auto` runs them all.")


def _setup_facts(project: Project) -> dict[str, Any]:
    evidence = read_evidence(project, "setup")
    return evidence.facts if evidence is not None and evidence.intact else {}


def _diagnose_auto(project: Project, ctx: DiagnoseContext, fix: bool, say: Callable[[str], None]) -> Diagnosis:
    """Every available diagnostic on the run; their findings merged, most likely first."""
    say(f"Diagnosing run {ctx.run.run_id}: {', '.join(DETECTORS)}")
    parts = [ctx.result(name) for name in DETECTORS]
    if ctx.metrics.get("nonfinite"):
        # first, so that on equal confidence the replay of the actual failure outranks static evidence
        parts.insert(0, _diagnose_nan_loss(project, ctx.run, ctx.run_dir, ctx.metrics, fix, say))
    elif fix:
        top = max((p for p in parts if p.findings), key=lambda p: p.findings[0].confidence, default=None)
        if top is not None:
            _try_fixes(project, ctx, top, say)
    auto = Diagnosis("auto", ctx.run.run_id,
                     sorted((f for p in parts for f in p.findings), key=lambda f: -f.confidence),
                     probes={p.diagnostic: p.probes for p in parts})
    for part in parts:
        auto.trials += part.trials
        auto.suggested_config = auto.suggested_config or part.suggested_config
    return auto


def _fix_candidates(top: Any, cfg: Any) -> list[dict[str, Any]]:
    """The config changes a short trial can verify for a finding's cause, least invasive first."""
    if top.cause == "unnormalized_inputs":
        return [{"label": "normalise the inputs per channel", "set": {"data.normalize": "per_channel"}}]
    if top.cause not in LR_TRIALS:
        return []
    lr = cfg.training.learning_rate
    candidates = []
    suggested = top.evidence.get("suggested_lr")
    if suggested:
        candidates.append({"label": f"learning rate {suggested:.3g} (the LR range test's suggestion)",
                           "set": {"training.learning_rate": float(f"{suggested:.3g}")}})
    for factor in LR_TRIALS[top.cause]:
        candidates.append({"label": f"learning rate × {factor:g}", "set": {"training.learning_rate": lr * factor}})
    return candidates


def _try_fixes(project: Project, ctx: DiagnoseContext, diagnosis: Diagnosis, say: Callable[[str], None]) -> None:
    """Short trials of the top finding's fixes; the first that removes the symptom wins and is
    written as a suggested config.

    The symptom, per diagnostic: convergence_stall needs the loss to fall at least 5 %; dead_relu
    also needs no layer more than half dead after the trial; input_scaling must train at least as
    well as the unchanged config in a trial of the same length."""
    from mlflow_core.diagnostics.trials import run_trial

    top = diagnosis.findings[0]
    cfg = ctx.run_config()
    candidates = _fix_candidates(top, cfg)
    if not candidates:
        diagnosis.probes["fix_note"] = (f"no config change can be verified by a short trial for `{top.cause}`; "
                                        "the fix is a change to the data, the model or the code")
        return
    steps = min(max(ctx.metrics.get("steps") or 0, 100), 300)
    min_drop = 0.05 if diagnosis.diagnostic == "convergence_stall" else 0.0
    judge = _dead_unit_judge(cfg, ctx) if diagnosis.diagnostic == "dead_relu" else None
    reference = None
    if diagnosis.diagnostic == "input_scaling":
        say(f"Trial: the configuration unchanged ({steps} steps), for comparison")
        reference = run_trial(cfg, project.root, ctx.data(), {}, steps)
        diagnosis.trials.append({"label": "unchanged (reference)", "set": {}, **reference, "symptom_gone": None})
    for candidate in candidates:
        say(f"Trial: {candidate['label']} ({steps} steps)")
        data = None if any(k.startswith("data.") for k in candidate["set"]) else ctx.data()
        outcome = run_trial(cfg, project.root, data, candidate["set"], steps, min_drop=min_drop, judge=judge)
        if reference is not None and isinstance(reference["last_loss"], float):
            # the fix removes out-of-range inputs by construction; the trial shows it trains as well
            as_good = (isinstance(outcome["last_loss"], float)
                       and outcome["last_loss"] <= reference["last_loss"] * (1 + REFERENCE_TOLERANCE))
            outcome["reference_last_loss"] = reference["last_loss"]
            outcome["symptom_gone"] = bool(outcome["symptom_gone"] and as_good)
        diagnosis.trials.append({**candidate, **outcome})
        if outcome["symptom_gone"]:
            diagnosis.trials[-1]["winner"] = True
            diagnosis.suggested_config = _write_suggested(project, diagnosis.diagnostic, ctx.run.run_id,
                                                          candidate, steps)
            return


def _dead_unit_judge(cfg: Any, ctx: DiagnoseContext) -> Callable[[Any], tuple[bool, dict[str, Any]]]:
    """A dead-ReLU trial passes when no layer of the trained model is more than half dead."""
    from mlflow_core.diagnostics.dynamics import dead_units, probe_batches
    from mlflow_core.diagnostics.dynamics_detectors import DEAD_FRACTION

    batches = probe_batches(cfg, ctx.data())

    def judge(model: Any) -> tuple[bool, dict[str, Any]]:
        worst = max((layer["dead_fraction"] for layer in dead_units(model.cpu(), batches) if layer["units"] >= 4),
                    default=0.0)
        return worst <= DEAD_FRACTION, {"worst_dead_fraction": worst}
    return judge


def _diagnose_nan_loss(project: Project, run: RunRecord, run_dir: Path, metrics: dict[str, Any], fix: bool,
                       say: Callable[[str], None]) -> Diagnosis:
    from mlflow_core.config.schema import WorkflowConfig
    from mlflow_core.diagnostics.nan_loss import candidate_fixes, rank_causes
    from mlflow_core.diagnostics.probes import replay_nonfinite, update_scale
    from mlflow_core.diagnostics.trials import run_trial
    from mlflow_core.training.checkpoint import load_checkpoint
    from mlflow_core.training.data import build_data

    nonfinite = metrics.get("nonfinite")
    if not nonfinite:
        return Diagnosis("nan_loss", run.run_id, [], probes={
            "note": f"no sign of a NaN loss in run {run.run_id}: all {metrics.get('steps', '?')} steps finite"})
    if not nonfinite.get("dump"):
        raise UserInputError(f"run {run.run_id} recorded a non-finite loss but saved no last good state to replay "
                             "(monitoring.nan_action: warn?).", hint="Run `wf phase baseline` again with nan_action: stop.")
    dump = load_checkpoint(run_dir / nonfinite["dump"])
    cfg = WorkflowConfig.model_validate(dump["config"])  # the run's own resolved config
    data_info = metrics["data"]
    shape = tuple(data_info["input_shape"])
    say(f"Replaying step {nonfinite['step']} of {run.run_id} from its last good state")
    replay = replay_nonfinite(dump, cfg, project.root, data_info["num_classes"], shape)
    scale = update_scale(dump, cfg, project.root, data_info["num_classes"], shape)
    findings = rank_causes(nonfinite, replay, scale)
    diagnosis = Diagnosis("nan_loss", run.run_id, findings, probes={"replay": replay, "update_scale": scale})
    if fix:
        fixes = candidate_fixes(findings, cfg.training.learning_rate)
        steps = min(max(4 * (nonfinite["step"] + 1), 60), 400)
        data = build_data(cfg, project.root) if fixes else None
        for candidate in fixes:
            say(f"Trial: {candidate['label']} ({steps} steps)")
            outcome = run_trial(cfg, project.root, data, candidate["set"], steps)
            diagnosis.trials.append({**candidate, **outcome})
            if outcome["symptom_gone"]:
                diagnosis.trials[-1]["winner"] = True
                diagnosis.suggested_config = _write_suggested(project, "nan_loss", run.run_id, candidate, steps)
                break
    return diagnosis


def _write_suggested(project: Project, name: str, run_id: str, candidate: dict[str, Any], steps: int) -> str:
    from mlflow_core.workflow.scaffold import write_config_variant

    values = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in candidate["set"].items())
    header = (f"# Suggested by `wf diagnose {name} --fix` on {date.today()} for run {run_id}:\n"
              f"# {candidate['label']} ({values}),\n"
              f"# verified by a {steps}-step trial run. Review it, then copy it over training_config.yaml.\n")
    path = write_config_variant(project, candidate["set"], header, project.root / "configs" / f"suggested_{name}.yaml")
    return project.relative(path)
