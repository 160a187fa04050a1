"""`wf runs select RUN`: an earlier run that ran to its end made the one its phase's gate judges.
"""

from __future__ import annotations

from mlflow_core.config.loader import load_config
from mlflow_core.errors import (
    UserInputError,
)
from mlflow_core.orchestration.outcome import (
    record_outcome,
    sync_auto_marks,
)
from mlflow_core.workflow.evidence import archived_evidence_path, read_evidence
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import (
    load_phase,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.runs import find_run
from mlflow_core.workflow.state import (
    RunRecord,
    load_state,
    save_state,
    who,
)

UNFINISHED_STATUSES = ("running", "interrupted", "crashed", "failed_input")


@locked("wf runs select {ref}")
def select_run(project: Project, ref: str) -> RunRecord:
    """`wf runs select RUN`: make an earlier run that ran to its end the one its phase's gate judges
    (its evidence and report come back from the copy kept per run); recorded in the history."""
    state = load_state(project)
    run = find_run(project, ref, state)
    if run.status in UNFINISHED_STATUSES:
        raise UserInputError(f"run {run.run_id} is {run.status}: only a run that ran to its end can be the one "
                             f"the {run.phase} gate judges.", hint=f"`wf runs --phase {run.phase}` lists them.")
    archived = read_evidence(project, run.phase, archived_evidence_path(project, run.run_id))
    if archived is None:
        raise UserInputError(f"run {run.run_id} has no evidence of its own in "
                             f"{project.relative(archived_evidence_path(project, run.run_id))} (wf keeps a copy "
                             "per run since this version).", hint=f"Run `wf phase {run.phase}` again.")
    if not archived.intact:
        raise UserInputError(f"{project.relative(archived_evidence_path(project, run.run_id))} "
                             f"{archived.why_not_intact()}; it cannot be selected.",
                             hint=f"Run `wf phase {run.phase}` again.")
    state.record("run_selected", phase=run.phase, run_id=run.run_id, by=who())
    name = load_config(project.config_path).project.name
    result = record_outcome(project, state, load_phase(run.phase, project.root), run, archived.facts, name,
                            getattr(archived.facts, "status", run.status), event="report_rendered")
    save_state(project, state)
    sync_auto_marks(project, state, run.phase, result.evidence)
    return run
