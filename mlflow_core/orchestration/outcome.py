"""A phase's end, run forward once: its success criteria judged on the facts in memory, the
report rendered, the evidence written once, the verdict taken from that evidence; the checklist's
auto items ticked to match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_core.config.loader import load_config
from mlflow_core.errors import (
    UserInputError,
)
from mlflow_core.reports.phase_reports import render_phase_report
from mlflow_core.workflow import fingerprints
from mlflow_core.workflow.checklist import set_marks
from mlflow_core.workflow.checks import CheckContext, run_check
from mlflow_core.workflow.evidence import Evidence, evidence_of, read_evidence, store_evidence
from mlflow_core.workflow.facts import DiagnosticsFacts, FileRef, OptimizationFacts, PhaseFacts
from mlflow_core.workflow.gates import evaluate_gate
from mlflow_core.workflow.phases import (
    PHASES,
    PhaseDefinition,
    load_phase,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.recommend import Recommendation
from mlflow_core.workflow.state import (
    ProjectState,
    RunRecord,
    new_project_id,
    now_iso,
)


@dataclass
class PhaseResult:
    phase: str
    run_id: str
    status: str
    passed: bool
    criteria: list[dict[str, Any]]
    report: str
    recommendation: Recommendation | None = None
    overridden: bool = False
    notes: list[str] = field(default_factory=list)
    evidence: Evidence | None = field(default=None, repr=False)  # as written: what the checklist's auto marks follow


def judge_criteria(project: Project, state: ProjectState, definition: PhaseDefinition, evidence: Evidence,
                   criteria: list[Any] | None = None) -> list[dict[str, Any]]:
    """Each success criterion (default: all of the phase's) judged on `evidence`, in order."""
    out = []
    for c in definition.success_criteria if criteria is None else criteria:
        result = run_check(c.check, CheckContext(project, state, definition.name, evidence, c.params))
        out.append({"id": c.id, "text": c.text, "check": c.check, "passed": result.passed, "detail": result.detail})
    return out


def approved_configs(project: Project, phase: str, facts: PhaseFacts) -> list[dict[str, Any]]:
    """Configs a gate approves besides the one its phase ran: optimization's optimized config, the
    fix that diagnostics verified by trial runs. Training one of them next does not re-open the
    gates before (the drift check in gates.py)."""
    path = None
    if isinstance(facts, OptimizationFacts) and facts.optimized_config:
        path = facts.optimized_config.path
    elif isinstance(facts, DiagnosticsFacts) and facts.verified_fix:
        path = facts.suggested_config
    if not path or not (project.root / path).is_file():
        return []
    try:
        return [fingerprints.config_fingerprint(load_config(project.root / path), phase)]
    except UserInputError:
        return []


def record_outcome(project: Project, state: ProjectState, definition: PhaseDefinition, run: RunRecord,
                   facts: PhaseFacts, project_name: str, status: str,
                   event: str = "phase_finished") -> PhaseResult:
    """Forward once: the criteria on the facts in memory, the report that shows them, the evidence
    (with the report) written once, and the report's own criterion judged on that evidence. Nothing
    is read back; a report that cannot be rendered leaves no evidence written."""
    phase = definition.name
    facts.report = None
    publish = PHASES[phase].publisher()
    if publish is not None:
        publish(project, run.run_id, project.inside(run.dir), facts, project_name)
    if state.project_id is None:  # a project made before wf bound evidence to its project
        state.project_id = new_project_id()
    binding = {"project_id": state.project_id, "entered_from": _entered_from(project, run)}
    draft = evidence_of(phase, run.run_id, facts, **binding)
    run.summary["evidence_sha256"] = draft.sha256  # the run the evidence belongs to (run_check matches them)
    criteria = definition.success_criteria
    reported = [i for i, c in enumerate(criteria) if c.check == "report_generated"]
    first = [i for i in range(len(criteria)) if i not in reported]
    judged = dict(zip(first, judge_criteria(project, state, definition, draft, [criteria[i] for i in first])))
    for i in reported:  # the report about to be written says that it exists
        judged[i] = {"id": criteria[i].id, "text": criteria[i].text, "check": criteria[i].check, "passed": True,
                     "detail": f"reports/{definition.report} (this report)"}
    report, rec = render_phase_report(project, state, definition, run.run_id, facts,
                                      [judged[i] for i in range(len(criteria))], project_name)
    facts.report = FileRef(**report)
    evidence = evidence_of(phase, run.run_id, facts, **binding)
    run.summary["evidence_sha256"] = store_evidence(project, evidence)
    judged.update(zip(reported, judge_criteria(project, state, definition, evidence, [criteria[i] for i in reported])))
    verdict = [judged[i] for i in range(len(criteria))]
    passed = all(c["passed"] for c in verdict) and status in ("completed", "early_stopped")
    run.status = status if passed or status != "completed" else "failed_criteria"
    run.finished_at = run.finished_at or now_iso()
    run.passed = passed
    shown_facts = facts.to_json()
    run.summary.update({k: shown_facts[k] for k in ("best", "epochs_completed", "duration_s") if k in shown_facts})
    run.summary["report"] = report["path"]
    state.record(event, phase=phase, run_id=run.run_id, status=run.status, passed=passed)
    return PhaseResult(phase, run.run_id, run.status, passed, verdict, report["path"], rec, evidence=evidence)


def _entered_from(project: Project, run: RunRecord) -> dict[str, Any] | None:
    """The evidence whose gate admitted `run`: its phase and hash, which the new evidence carries."""
    if not run.entered_from:
        return None
    before = read_evidence(project, run.entered_from)
    if before is None or not before.intact:
        return None
    return {"phase": run.entered_from, "evidence_sha256": before.sha256}


def sync_auto_marks(project: Project, state: ProjectState, phase: str, recorded: Evidence | None = None) -> Any:
    """Tick (or untick) the auto items of the phase's checklist in the project's copy; the gate's
    verdict after, or None without a checklist. `recorded`: the evidence the phase just wrote."""
    definition = load_phase(phase, project.root)
    path = project.checklist_path(definition.exit_checklist)
    if not path.is_file():
        return None
    gate = evaluate_gate(project, state, phase, recorded=recorded)
    set_marks(path, {i.id: i.checked for i in gate.items if i.kind == "auto"})
    return gate
