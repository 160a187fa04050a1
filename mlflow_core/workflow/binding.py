"""Evidence bound to its project and its history: a project id made at `wf init` and carried by every
evidence, and the hash of the evidence whose gate admitted each phase (`entered_from`). A pull request
that copies or forges one file is caught here; one that forges every file consistently is what
`wf verify` recomputes (docs/gates.md: what each can promise)."""

from __future__ import annotations

from mlflow_core.workflow import fingerprints
from mlflow_core.workflow.evidence import Evidence, find_evidence
from mlflow_core.workflow.phases import PHASES
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import ProjectState


def _source_of(project: Project, evidence: Evidence) -> Evidence | None:
    """The evidence `evidence` was entered from, as this project holds it (current or archived)."""
    named = evidence.entered_from or {}
    phase, digest = named.get("phase"), named.get("evidence_sha256")
    if phase not in PHASES or not isinstance(digest, str):
        return None
    return find_evidence(project, phase, digest)


def leads_back_to(project: Project, evidence: Evidence, earlier: Evidence, steps: int = 12) -> bool:
    """Whether `evidence`'s history (entered_from, and so on back) reaches `earlier` itself."""
    current: Evidence | None = evidence
    for _ in range(steps):
        current = _source_of(project, current) if current is not None else None
        if current is None:
            return False
        if current.phase == earlier.phase:
            return current.sha256 == earlier.sha256
    return False


def binding_problems(project: Project, state: ProjectState, phase: str, evidence: Evidence | None
                     ) -> list[fingerprints.Drift]:
    """Evidence that is not this project's own history: recorded by another project (its id is not
    state.json's), entered from evidence this project does not hold, or run with a config the gate it
    was entered from never approved. A pull request that copies or forges one file is caught here; one
    that forges every file consistently is what `wf verify` recomputes."""
    if evidence is None or not evidence.intact or state.project_id is None:
        return []
    where = f".wf/evidence/{phase}.json"
    if evidence.project_id != state.project_id:
        recorder = f"project {evidence.project_id}" if evidence.project_id else "no project (no project_id)"
        return [fingerprints.Drift("evidence", f"{where} was recorded by {recorder}, not by this project "
                                   f"({state.project_id}, .wf/state.json)")]
    if evidence.entered_from is None:
        return [] if phase == "setup" else [fingerprints.Drift(
            "evidence", f"{where} names no evidence it was entered from; every phase after setup does")]
    source = _source_of(project, evidence)
    if source is None:
        named = evidence.entered_from
        return [fingerprints.Drift("evidence", f"{where} was entered from {named.get('phase')} evidence "
                                   f"{str(named.get('evidence_sha256'))[:12]}, which this project does not hold")]
    if source.project_id != evidence.project_id:
        return [fingerprints.Drift("evidence", f"{where} was entered from evidence of another project "
                                   f"({source.project_id})")]
    if evidence.facts.fingerprints and source.facts.fingerprints:
        ran = fingerprints.vouched(evidence.facts.fingerprints.config.get("values") or {}, source.phase)
        approved = [fingerprints.vouched(c.get("values") or {}, source.phase)
                    for c in source.facts.fingerprints.approved_configs()]
        overridden = any(getattr(e, "phase", None) == phase for e in state.overrides())
        if ran not in approved and not overridden:  # an override is on the record, shown with its author
            return [fingerprints.Drift("evidence", f"{where} records a config that the {source.phase} gate it was "
                                       f"entered from never approved: {fingerprints.config_changes(approved[0], ran)}")]
    return []
