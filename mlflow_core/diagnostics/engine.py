"""`wf diagnose NAME`: pick the run, probe, rank causes, optionally try fixes, write the report and
a suggested config. Never edits the user's config."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from mlflow_core.atomic import atomic_write_text
from mlflow_core.diagnostics import AVAILABLE, PLANNED, Diagnosis
from mlflow_core.diagnostics.evidence_detectors import EVIDENCE_DETECTORS, DiagnoseContext
from mlflow_core.errors import UserInputError
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
    metrics = _metrics(run_dir)
    ctx = DiagnoseContext(project.root, run, run_dir, metrics, _setup_facts(project))
    if name == "auto":
        diagnosis = _diagnose_auto(project, ctx, fix, say)
    elif name == "nan_loss":
        diagnosis = _diagnose_nan_loss(project, run, run_dir, metrics, fix, say)
    else:
        diagnosis = EVIDENCE_DETECTORS[name](ctx)
        if fix and diagnosis.findings:
            diagnosis.probes["fix_note"] = ("no config change can be verified by a short trial for this cause; "
                                            "the fix is a change to the data or the code")
    diagnosis.report = write_diagnosis_report(project, diagnosis.to_json(), run_dir)["path"]
    return diagnosis


def _check_name(name: str) -> None:
    if name not in PLANNED and name != "auto":
        raise UserInputError(f"unknown diagnostic {name!r}; diagnostics: auto, {', '.join(PLANNED)}.")
    if name not in AVAILABLE and name != "auto":
        raise UserInputError(f"`wf diagnose {name}` is not available in this version of wf; "
                             f"available: auto, {', '.join(AVAILABLE)}.")


def _metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "logs" / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot be read ({exc}).") from None


def _setup_facts(project: Project) -> dict[str, Any]:
    evidence = read_evidence(project, "setup")
    return evidence.facts if evidence is not None and evidence.intact else {}


def _diagnose_auto(project: Project, ctx: DiagnoseContext, fix: bool, say: Callable[[str], None]) -> Diagnosis:
    """Every available diagnostic on the run; their findings merged, most likely first."""
    parts = [detector(ctx) for detector in EVIDENCE_DETECTORS.values()]
    if ctx.metrics.get("nonfinite"):
        parts.append(_diagnose_nan_loss(project, ctx.run, ctx.run_dir, ctx.metrics, fix, say))
    auto = Diagnosis("auto", ctx.run.run_id,
                     sorted((f for p in parts for f in p.findings), key=lambda f: -f.confidence),
                     probes={p.diagnostic: p.probes for p in parts})
    for part in parts:
        auto.trials += part.trials
        auto.suggested_config = auto.suggested_config or part.suggested_config
    return auto


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
    from mlflow_core.config.loader import load_config_text
    from mlflow_core.workflow.scaffold import set_yaml_value

    text = project.config_path.read_text(encoding="utf-8")
    try:
        for dotted, value in candidate["set"].items():
            text = set_yaml_value(text, dotted, f"{value:.6g}" if isinstance(value, float) else str(value))
    except KeyError:  # the key is absent from the user's file: rewrite it without its comments
        raw = yaml.safe_load(project.config_path.read_text(encoding="utf-8")) or {}
        for dotted, value in candidate["set"].items():
            section, key = dotted.split(".")
            raw.setdefault(section, {})[key] = value
        text = yaml.safe_dump(raw, sort_keys=False)
    header = (f"# Suggested by `wf diagnose {name} --fix` on {date.today()} for run {run_id}:\n"
              f"# {candidate['label']} ({', '.join(f'{k} = {v:g}' if isinstance(v, float) else f'{k} = {v}' for k, v in candidate['set'].items())}),\n"
              f"# verified by a {steps}-step trial run. Review it, then copy it over training_config.yaml.\n")
    path = project.root / "configs" / f"suggested_{name}.yaml"
    load_config_text(text, str(path))  # the suggestion must validate
    atomic_write_text(path, header + text)
    return project.relative(path)


def write_diagnosis_report(project: Project, diagnosis: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """Render `reports/diagnosis_<name>.md` from a diagnosis (its JSON form) and the run's files."""
    from mlflow_core.reports.plots import diagnosis_figures
    from mlflow_core.reports.render import write_report

    figures, note = diagnosis_figures(diagnosis, run_dir, project.reports_dir / "figures")
    context = {"d": diagnosis, "metrics": _metrics(run_dir), "figures": figures, "figures_note": note,
               "playbook_link": f"../diagnostics/{diagnosis['diagnostic']}.md"}
    return write_report(project, f"diagnosis_{diagnosis['diagnostic']}.md", "diagnosis.md.j2", context)
