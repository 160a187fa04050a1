"""`wf decide CHOICE`: the decision a phase that leads to several asks for, on the record.
"""

from __future__ import annotations

from mlflow_core.errors import (
    UserInputError,
    did_you_mean,
)
from mlflow_core.orchestration.outcome import (
    sync_auto_marks,
)
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import (
    DECISIONS,
    load_phase,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import (
    Decision,
    load_state,
    now_iso,
    save_state,
)


def decide(project: Project, choice: str, reason: str | None) -> tuple[Decision, bool]:
    """Record the decision in the current phase; (the decision, whether it was already on record:
    the same choice on the same run, with no other reason, is the decision made before, not a new one)."""
    if choice not in DECISIONS:
        raise UserInputError(f"unknown decision {choice!r}; choose one of: {', '.join(DECISIONS)}."
                             + did_you_mean(choice, DECISIONS))
    return _decide(project, choice, reason)


@locked("wf decide {choice}")
def _decide(project: Project, choice: str, reason: str | None) -> tuple[Decision, bool]:
    state = load_state(project)
    current = state.current_phase
    if current is None:
        raise UserInputError("nothing to decide yet: no phase has run.", hint="Run `wf phase setup`.")
    options = load_phase(current, project.root).next
    target = DECISIONS[choice]
    if len(options) < 2:
        raise UserInputError(f"no decision to make in {current}: it leads only to "
                             f"{', '.join(options) or 'nothing'}.")
    if target not in options:
        verbs = [v for v, p in DECISIONS.items() if p in options]
        raise UserInputError(f"{current} cannot lead to {target}; choose one of: {', '.join(verbs)}.")
    judged = read_evidence(project, current)  # the run the gate judges, not a later interrupted one
    if judged is None or not judged.run_id:
        raise UserInputError(f"{current} has no finished run to decide on.", hint=f"Run `wf phase {current}`.")
    before = state.decision
    if (before is not None and (before.phase, before.choice, before.after_run) == (current, choice, judged.run_id)
            and reason in (None, before.reason)):
        return before, True
    decision = Decision(phase=current, choice=choice, next_phase=target, reason=reason, time=now_iso(),
                        after_run=judged.run_id)
    state.decision = decision
    state.record("decision", **decision.model_dump(exclude={"time"}))
    save_state(project, state)
    sync_auto_marks(project, state, current)
    return decision, False
