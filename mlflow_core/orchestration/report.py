"""`wf report PHASE`: the phase's report rendered again from its recorded evidence and run files.
"""

from __future__ import annotations

from mlflow_core.config.loader import load_config
from mlflow_core.errors import (
    UserInputError,
)
from mlflow_core.orchestration.committed import unchanged_on_failure
from mlflow_core.orchestration.outcome import (
    PhaseResult,
    record_outcome,
    sync_auto_marks,
)
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import (
    load_phase,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import (
    load_state,
    save_state,
)


@locked("wf report {phase}")
def rerender_report(project: Project, phase: str) -> PhaseResult:
    """`wf report PHASE`: render the phase's report again from its recorded evidence and run files."""
    with unchanged_on_failure(project):
        state = load_state(project)
        definition = load_phase(phase, project.root)
        evidence = read_evidence(project, phase)
        if evidence is None:
            raise UserInputError(f"{phase} has recorded no run yet; run `wf phase {phase}` first.")
        if not evidence.intact:
            raise UserInputError(f".wf/evidence/{phase}.json {evidence.why_not_intact()}; "
                                 f"run `wf phase {phase}` again.")
        run = state.run(evidence.run_id or "")
        if run is None:
            raise UserInputError(f"run {evidence.run_id} of {phase} is not in .wf/state.json; "
                                 f"run `wf phase {phase}` again.")
        name = load_config(project.config_path).project.name
        result = record_outcome(project, state, definition, run, evidence.facts, name,
                                getattr(evidence.facts, "status", run.status), event="report_rendered")
        save_state(project, state)
        sync_auto_marks(project, state, phase, result.evidence)
        return result
