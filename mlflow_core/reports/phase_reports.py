"""Build each phase's report from recorded files (evidence, metrics.json, state): no torch, so
`wf report PHASE` can render it again anywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_core.config.loader import load_config
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.reports.diagnosis import write_diagnosis_report
from mlflow_core.reports.plots import confusion_figure, learning_curves, optimization_figures
from mlflow_core.reports.render import write_report
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import FinalizationFacts, PhaseFacts
from mlflow_core.workflow.gates import selected_by
from mlflow_core.workflow.noise import run_at_chance
from mlflow_core.workflow.phases import PHASES, PhaseDefinition
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.recommend import Recommendation, recommend
from mlflow_core.workflow.records import load_run_metrics
from mlflow_core.workflow.state import ProjectState, now_iso
from mlflow_core.workflow.units import metric_value, percent, wilson_interval


@dataclass
class ReportInput:
    """What every phase's report renderer gets: the run, its facts and its criteria."""
    project: Project
    state: ProjectState
    definition: PhaseDefinition
    run_id: str
    facts: Any  # the phase's PhaseFacts model (workflow/facts.py)
    criteria: list[dict[str, Any]]
    project_name: str
    overrides: list[dict[str, Any]]
    record: dict[str, Any]


def render_phase_report(project: Project, state: ProjectState, definition: PhaseDefinition, run_id: str,
                        facts: PhaseFacts, criteria: list[dict[str, Any]], project_name: str,
                        ) -> tuple[dict[str, str], Recommendation | None]:
    """The phase's report, by its renderer in the phase registry (workflow/phases.py)."""
    given = ReportInput(project, state, definition, run_id, facts, criteria, project_name,
                        [e.model_dump(mode="json") for e in state.overrides()],
                        run_record_note(state, definition.name, run_id, project.root))
    return PHASES[definition.name].render()(given)


ENVIRONMENT = "logs/environment.json"  # in setup's run directory: what it found, for reports/environment.md


def publish_setup(project: Project, run_id: str, run_dir: Path, facts: Any, project_name: str) -> None:
    """reports/environment.md (and .json) from what the setup run found: written with the setup
    report when the run has an outcome, and again by `wf report setup`."""
    from mlflow_core.atomic import atomic_write_json
    from mlflow_core.workflow.facts import FileRef

    recorded = run_dir / ENVIRONMENT
    if not recorded.is_file():  # a setup run of an earlier wf wrote its environment straight to reports/
        recorded = project.reports_dir / "environment.json"
    env = json.loads(recorded.read_text(encoding="utf-8"))
    atomic_write_json(project.reports_dir / "environment.json", env)
    report = write_report(project, "environment.md", "environment.md.j2",
                          {"project_name": project_name, "env": env, "run_id": run_id, "recorded_at": now_iso()})
    facts.environment.report = FileRef(**report)


def render_setup(r: ReportInput) -> tuple[dict[str, str], None]:
    ok = all(c["passed"] for c in r.criteria)
    next_step = ("Tick the manual items of `checklists/reproducibility.md` (`wf checklist show "
                 "reproducibility`), then run `wf phase baseline`." if ok else
                 "Fix the ❌ items above and run `wf phase setup` again.")
    context = {"project_name": r.project_name, "run_id": r.run_id, "recorded_at": now_iso(), "facts": r.facts.to_json(),
               "criteria": r.criteria, "overrides": r.overrides, "next_step": next_step, "record": r.record}
    return write_report(r.project, r.definition.report, "setup_report.md.j2", context), None


def render_diagnostics(r: ReportInput) -> tuple[dict[str, str], None]:

    run = r.state.run(r.facts.diagnosed_run)
    return write_diagnosis_report(r.project, r.facts.to_json()["diagnosis"], r.project.inside(run.dir),
                                  diagnosis_next_step(r.facts)), None


def diagnosis_next_step(facts: Any) -> str:
    """Where Phase 3's outcome leads: each outcome has its way on, named with its commands."""
    outcome, run = facts.concluded(), facts.diagnosed_run
    checklist = "`checklists/post_diagnostics.md`"
    if outcome == "nothing_to_fix":
        return (f"**Nothing to fix.** Run `{run}` met its success criteria and no diagnostic found a problem "
                "(what each could see is measured above). Tick `fix_applied` in "
                f"{checklist} to confirm that none is needed (`wf checklist tick post_diagnostics fix_applied`), "
                "then `wf decide optimize --reason \"nothing to fix\"` and `wf phase optimization` to tune it; "
                "or `wf decide rebaseline` to train the baseline again.")
    if outcome == "cause_found":
        top = facts.top_finding()
        apply = (f"copy `{facts.suggested_config}` over `training_config.yaml`" if facts.suggested_config
                 else "apply the fix above to the data, the code or the config")
        return (f"**Cause: `{top.cause}`.** {apply[0].upper()}{apply[1:]}, tick `fix_applied` in {checklist}, "
                "then `wf decide rebaseline --reason \"…\"` and `wf phase baseline` to train with the fix.")
    return (f"**No cause stands out.** Run `{run}` did not meet its success criteria, and no finding is likely "
            "enough to be its cause. Run a diagnostic by name (`wf diagnose NAME --fix`), change the config "
            "and train the baseline again, or go on without a cause on the record: `wf checklist waive "
            "post_diagnostics root_cause_identified --reason \"…\"`.")


def render_optimization(r: ReportInput) -> tuple[dict[str, str], None]:

    configured_lr = load_config(r.project.config_path).training.learning_rate
    recorded = read_evidence(r.project, "baseline")
    best = recorded.facts.best if recorded is not None and recorded.intact else None
    baseline = (best.value, recorded.facts.epochs_completed) if best is not None else None
    figures, note = optimization_figures(r.facts, r.project.reports_dir / "figures", configured_lr, baseline)
    context = {"project_name": r.project_name, "run_id": r.run_id, "f": r.facts.to_json(), "criteria": r.criteria,
               "figures": figures, "figures_note": note, "overrides": r.overrides, "record": r.record,
               "configured_lr": configured_lr}
    return write_report(r.project, r.definition.report, "optimization_results.md.j2", context), None


def render_finalization(r: ReportInput) -> tuple[dict[str, str], None]:
    context = {**_final_context(r.project, r.state, r.run_id, r.facts, r.criteria, r.project_name, r.overrides),
               "record": r.record}
    return write_report(r.project, r.definition.report, "final_report.md.j2", context), None


def render_training(r: ReportInput) -> tuple[dict[str, str], Recommendation]:
    """A training phase's results (the baseline's): criteria, learning curves, checkpoints and the
    recommended next step."""
    recorded = load_run_metrics(r.project.root / r.facts.metrics.path)
    rec = recommend(recorded, r.criteria, r.definition.playbooks)
    metrics = recorded.to_json()  # what the template and the plots read
    # judged on the whole run, from its recorded figures (so a report rendered again shows it too)
    at_chance = run_at_chance(recorded)
    if at_chance:
        at_chance["message"] += " (`wf diagnose overfitting` names the likely causes)"
        metrics["anomalies"] = [*(metrics.get("anomalies") or []), at_chance]
    figures, note = learning_curves(metrics, r.project.reports_dir / "figures", r.definition.name)
    saved = recorded.checkpoints
    named = [(n, c) for n, c in (("best", saved.best), ("last", saved.last)) if c]
    named += [(f"epoch {c.epoch}", c) for c in saved.periodic]
    named += [(f"top {rank}: {recorded.metric} {c.value:.4g}", c) for rank, c in enumerate(saved.top, 1)]
    checkpoints = [(name, c.model_dump(mode="json", exclude_unset=True)) for name, c in named]
    epochs = metrics["epochs"]
    rec_view = {"verdict": rec.verdict, "next_phase": rec.next_phase, "command": rec.command,
                "reason": rec.reason, "playbook": rec.playbook,
                # reports/ sits one level below the project root, where diagnostics/ lives
                "playbook_link": f"../{rec.playbook}" if rec.playbook else None}
    context = {"project_name": r.project_name, "m": metrics, "criteria": r.criteria, "rec": rec_view,
               "last": epochs[-1] if epochs else None, "figures": figures, "figures_note": note,
               "checkpoints": checkpoints, "run_dir": r.facts.run_dir, "overrides": r.overrides,
               "record": r.record, "data_wait": r.facts.data_wait_fraction}
    return write_report(r.project, r.definition.report, "baseline_results.md.j2", context), rec


def run_record_note(state: ProjectState, phase: str, run_id: str, project_root: Path | None = None) -> dict[str, Any]:
    """Which run the report describes and how it became the one its gate judges, and every waiver
    on record (a waiver stays visible in every later report)."""

    checklists = {getattr(e, "checklist", "") for e in state.history if e.event == "checklist_waive"}
    waivers = [{"checklist": name, "item": item, "by": getattr(e, "by", "?"), "time": e.time,
                "reason": getattr(e, "reason", "")}
               for name in sorted(checklists) for item, e in state.waivers(name).items()]
    run = state.run(run_id)
    mlflow = None
    if run is not None and run.mlflow_run_id and run.mlflow_uri:
        from mlflow_core.monitoring.mlflow_store import ui_command

        mlflow = {"run_id": run.mlflow_run_id, "ui": ui_command(run.mlflow_uri, project_root)}
    return {"phase": phase, "run_id": run_id, "selected_by": selected_by(state, phase, run_id), "waivers": waivers,
            "mlflow": mlflow}


def class_namer(names: list[str] | None) -> Any:
    """Class id → 'name (id)' when the data names its classes, else the id."""
    return (lambda i: f"{names[int(i)]} ({i})" if 0 <= int(i) < len(names) else str(i)) if names else str


def _final_context(project: Project, state: ProjectState, run_id: str, facts: FinalizationFacts,
                   criteria: list[dict[str, Any]], project_name: str, overrides: list[dict[str, Any]]) -> dict[str, Any]:

    cfg = WorkflowConfig.model_validate(facts.config)  # the config the final runs trained
    evaluated = facts.evaluated()
    first = evaluated[0].model_dump(mode="json", exclude_unset=True) if evaluated else None
    names = facts.data.class_names
    figures = [confusion_figure(first["test"]["confusion"], project.reports_dir / "figures", names)] if first else []
    env_path = project.reports_dir / "environment.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else {}
    decisions = [e.model_dump(mode="json") for e in state.history if e.event == "decision"]
    against_target = test_against_target(facts, cfg)
    return {"project_name": project_name, "run_id": run_id, "f": facts.to_json(), "criteria": criteria, "cfg": cfg,
            "first": first, "figures": [f for f in figures if f], "env": env,
            "runs": [r for r in state.runs if r.finished_at], "decisions": decisions, "overrides": overrides,
            "limitations": limitations(facts, first, _finalized_below_target(project, state, cfg),
                                       against_target, class_namer(names)),
            "class_name": class_namer(names), "against_target": against_target}


# the test metric that measures what each validation metric does (the loss has none: the test NLL
# leaves out label smoothing and the loss's weights)
TEST_METRIC_OF = {"val_accuracy": ("accuracy", "accuracy"), "val_f1": ("macro_f1", "macro F1"),
                  "val_mcc": ("mcc", "MCC"), "val_iou": ("mean_iou", "mean IoU")}


def test_against_target(facts: FinalizationFacts, cfg: WorkflowConfig) -> dict[str, Any] | None:
    """The project's target (validation.target) against the test split's mean of the same metric."""
    target, metric = cfg.validation.target, cfg.validation.metric
    summary = facts.summary or {}
    if target is None or metric not in TEST_METRIC_OF or TEST_METRIC_OF[metric][0] not in summary:
        return None
    key, label = TEST_METRIC_OF[metric]
    value = summary[key].mean
    return {"metric": metric, "label": label, "target": metric_value(target, metric),
            "value": metric_value(value, metric), "met": value >= target}


def _finalized_below_target(project: Project, state: ProjectState, cfg: WorkflowConfig) -> str | None:
    """Said on the model card when the baseline missed validation.target and the decision after it
    was to finalize anyway: a reader must not take the target as met."""
    decision = state.decision_in("baseline")
    evidence = read_evidence(project, "baseline")
    if decision is None or decision.choice != "finalize" or evidence is None or not evidence.intact:
        return None
    best, target = evidence.facts.best, evidence.facts.target
    if best is None or target is None:
        return None
    met = best.value >= target if cfg.validation.mode == "max" else best.value <= target
    if met:
        return None
    reason = getattr(decision, "reason", None)
    return (f"The baseline missed its target ({best.metric} {metric_value(best.value, best.metric)}, "
            f"validation.target {metric_value(target, best.metric)}), and "
            f"the decision after it was to finalize anyway" + (f": “{reason}”." if reason else "."))


def limitations(facts: FinalizationFacts, first: dict[str, Any] | None, baseline_note: str | None = None,
                against_target: dict[str, Any] | None = None, class_name: Any = str) -> list[str]:
    """What a reader of the model card must know, derived from the evidence."""
    out = []
    if against_target and not against_target["met"]:
        out.append(f"The test {against_target['label']} ({against_target['value']}) is below the project's target "
                   f"(validation.target: {against_target['metric']} {against_target['target']}).")
    if len(facts.evaluated()) < 2:
        out.append("One seed only: the spread of the test metrics over seeds is unknown "
                   "(finalization.seeds ≥ 3 measures it).")
    samples = facts.test_split.samples
    accuracy = (facts.summary or {}).get("accuracy")
    if samples and accuracy is not None:
        low, high = wilson_interval(accuracy.mean, samples)
        if high - low > 0.02:  # more than ±1 point: the test split is too small to read the last digit
            measured = (f"{round(accuracy.mean * samples)} of {samples} correct" if len(facts.evaluated()) == 1
                        else f"{percent(accuracy.mean)} correct on average over the models")
            out.append(f"The test split has {samples} samples ({measured}): the accuracy's 95 % Wilson score "
                       f"interval is {percent(low)} to {percent(high)}.")
    if first:
        weak = [p for p in first["test"]["per_class"] if p["support"] and p["recall"] < 0.8]
        if weak:
            out.append("Classes with recall below 0.8: "
                       + ", ".join(f"{class_name(p['class'])}: {p['recall']:.2f}" for p in weak) + ".")
        if first["test"].get("ece", 0) > 0.05:
            out.append(f"Calibration: expected calibration error {first['test']['ece']:.3f}; confidences are not "
                       "probabilities to rely on without recalibration (e.g. temperature scaling).")
    if baseline_note:
        out.append(baseline_note)
    if facts.test_split.evaluated_before_by:
        out.append("The test split had been evaluated before this run: it no longer measures unseen performance.")
    if not any(e.verified for e in facts.exports):
        out.append("No export could be verified.")
    out.append("The data's provenance, intended use and out-of-distribution behaviour are for the team to state: "
               "wf only knows what the runs recorded.")
    return out
