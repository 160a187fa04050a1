"""`wf diagnose NAME`: pick the run, run the diagnostic (registry.py), optionally try its fixes as
short trial runs, write the report and a suggested config. Never edits the user's config."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, evidence_rank
from mlflow_core.diagnostics.registry import REGISTRY
from mlflow_core.errors import UserInputError, did_you_mean
from mlflow_core.reports.diagnosis import write_diagnosis_report
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import DataCheck
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.project import Project, safe_name
from mlflow_core.workflow.records import load_run_metrics
from mlflow_core.workflow.scaffold import write_config_variant
from mlflow_core.workflow.state import RunRecord, load_state, save_state


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


REFERENCE_TOLERANCE = 0.05  # a fix trial's last-tenth loss may exceed the unchanged config's by 5 %


def diagnose(project: Project, name: str, run_id: str | None = None, fix: bool = False,
             on_message: Callable[[str], None] | None = None) -> Diagnosis:
    """`wf diagnose NAME`: under the project lock, diagnose and record it in the history."""
    _check_name(name)  # an unknown name is exit 2 before the lock is asked for
    return _diagnose(project, name, run_id, fix, on_message)


@locked("wf diagnose {name}")
def _diagnose(project: Project, name: str, run_id: str | None, fix: bool,
              on_message: Callable[[str], None] | None) -> Diagnosis:
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
    diagnosis = diagnose_run(project, name, run, fix, on_message)
    diagnosis.report = write_diagnosis_report(project, diagnosis.to_json(), project.inside(run.dir))["path"]
    return diagnosis


def diagnose_run(project: Project, name: str, run: RunRecord, fix: bool = False,
                 on_message: Callable[[str], None] | None = None, *, write: bool = True) -> Diagnosis:
    """The diagnosis of `run`, its fix trials with `fix`; `write=False` writes no suggested config
    (`wf verify` diagnosing again: the path it would have written is named all the same)."""
    say = on_message or (lambda _m: None)
    _check_name(name)
    run_dir = project.inside(run.dir)
    ctx = DiagnoseContext(project.root, run, run_dir, load_run_metrics(run_dir / "logs" / "metrics.json"),
                          _setup_data(project),
                          {n: d.detect for n, d in REGISTRY.items()}, say=say)
    if name == "auto":
        return _diagnose_auto(project, ctx, fix, write)
    say(f"Diagnosing {name} on run {run.run_id}")
    diagnosis = _sized(ctx.result(name))
    if fix and diagnosis.findings:
        _try_fixes(project, ctx, diagnosis, write)
    return diagnosis


def _check_name(name: str) -> None:
    if name not in REGISTRY and name != "auto":
        raise UserInputError(f"unknown diagnostic {name!r}; diagnostics: auto, {', '.join(REGISTRY)}."
                             + did_you_mean(name, ["auto", *REGISTRY]),
                             hint="`wf diagnose auto` runs them all.")


def _setup_data(project: Project) -> DataCheck | None:
    evidence = read_evidence(project, "setup")
    return evidence.facts.data if evidence is not None and evidence.intact else None


def _diagnose_auto(project: Project, ctx: DiagnoseContext, fix: bool, write: bool = True) -> Diagnosis:
    """Every diagnostic that applies to the run; their findings merged, most likely first. With
    `fix`, the fixes of the strongest finding are tried (or of a diagnostic that claims them)."""
    applied = [d for d in REGISTRY.values() if d.applies(ctx)]
    ctx.say(f"Diagnosing run {ctx.run.run_id}: {', '.join(d.name for d in applied)}")
    parts = [_sized(ctx.result(d.name)) for d in applied]
    if fix:
        claimed = [p for p in parts if REGISTRY[p.diagnostic].claims_fixes]
        top = min((p for p in claimed or parts if p.findings), key=lambda p: evidence_rank(p.findings[0]), default=None)
        if top is not None:
            _try_fixes(project, ctx, top, write)
    auto = Diagnosis("auto", ctx.run.run_id,
                     sorted((f for p in parts for f in p.findings), key=evidence_rank),
                     probes={p.diagnostic: p.probes for p in parts},
                     sensitivity={k: v for p in parts for k, v in p.sensitivity.items()})
    for part in parts:
        auto.trials += part.trials
        auto.suggested_config = auto.suggested_config or part.suggested_config
    return auto


def _sized(diagnosis: Diagnosis) -> Diagnosis:
    """The diagnosis with the smallest effect its detector can see, where the detector did not
    word it for the run's data itself."""
    if not diagnosis.sensitivity and REGISTRY[diagnosis.diagnostic].sees:
        diagnosis.sensitivity = {diagnosis.diagnostic: REGISTRY[diagnosis.diagnostic].sees}
    return diagnosis


def _try_fixes(project: Project, ctx: DiagnoseContext, diagnosis: Diagnosis, write: bool = True) -> None:
    """Short trials of the diagnosis's fixes, judged as its diagnostic's TrialPlan says; the first
    that removes the symptom wins and is written as a suggested config."""
    # torch, for a trial: `wf diagnose` without --fix never loads it
    from mlflow_core.diagnostics.trials import run_trial

    diagnostic = REGISTRY[diagnosis.diagnostic]
    candidates = diagnostic.fixes(diagnosis, ctx) if diagnostic.fixes else []
    if not candidates:
        diagnosis.probes["fix_note"] = (f"no config change can be verified by a short trial for "
                                        f"`{diagnosis.findings[0].cause}`; the fix is a change to the data, the "
                                        "model or the code")
        return
    plan, cfg, say = diagnostic.trial, ctx.run_config(), ctx.say
    steps = plan.steps(ctx)
    judge = plan.judge(ctx) if plan.judge else None
    trials = len(candidates) + bool(plan.reference)
    say(f"Plan: up to {trials} short trial{'s' * (trials != 1)} of {steps} steps each"
        + (" (the configuration unchanged, then each fix)" if plan.reference else " (one per fix)")
        + ", stopping at the first fix that removes the symptom")
    reference = None
    if plan.reference:
        say(f"Trial: the configuration unchanged ({steps} steps), for comparison")
        reference = run_trial(cfg, project.root, ctx.data(), {}, steps)
        diagnosis.trials.append({"label": "unchanged (reference)", "set": {}, **reference, "symptom_gone": None})
    for candidate in candidates:
        say(f"Trial: {candidate['label']} ({steps} steps)")
        data = None if any(k.startswith("data.") for k in candidate["set"]) else ctx.data()
        outcome = run_trial(cfg, project.root, data, candidate["set"], steps, min_drop=plan.min_drop, judge=judge)
        if reference is not None and isinstance(reference["last_loss"], float):
            as_good = (isinstance(outcome["last_loss"], float)
                       and outcome["last_loss"] <= reference["last_loss"] * (1 + REFERENCE_TOLERANCE))
            outcome["reference_last_loss"] = reference["last_loss"]
            outcome["symptom_gone"] = bool(outcome["symptom_gone"] and as_good)
        diagnosis.trials.append({**candidate, **outcome})
        if outcome["symptom_gone"]:
            diagnosis.trials[-1]["winner"] = True
            diagnosis.suggested_config = (_write_suggested(project, diagnosis.diagnostic, ctx.run.run_id, candidate,
                                                           steps) if write else
                                          project.relative(suggested_path(project, diagnosis.diagnostic)))
            return


def _write_suggested(project: Project, name: str, run_id: str, candidate: dict[str, Any], steps: int) -> str:

    values = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in candidate["set"].items())
    header = (f"# Suggested by `wf diagnose {name} --fix` on {date.today()} for run {run_id}:\n"
              f"# {candidate['label']} ({values}),\n"
              f"# verified by a {steps}-step trial run. Review it, then copy it over training_config.yaml.\n")
    path = write_config_variant(project, candidate["set"], header, suggested_path(project, name))
    return project.relative(path)


def suggested_path(project: Project, name: str) -> Path:
    return project.root / "configs" / f"suggested_{name}.yaml"
