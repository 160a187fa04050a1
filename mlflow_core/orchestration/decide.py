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
    shortfall = _shortfall(judged.facts) if target == "finalization" and judged.intact else None
    if shortfall and not reason:
        raise UserInputError(f"finalizing below the target: {shortfall}. A model that misses its target may still "
                             "be finalized, but the shortfall goes on the record with your reason.",
                             hint=f"`wf decide {choice} --reason \"…\"`, or `wf decide diagnose|optimize` to improve it.")
    decision = Decision(phase=current, choice=choice, next_phase=target, reason=reason, time=now_iso(),
                        after_run=judged.run_id, shortfall=shortfall)
    state.decision = decision
    state.record("decision", **decision.model_dump(exclude={"time"}))
    save_state(project, state)
    sync_auto_marks(project, state, current)
    return decision, False


def _shortfall(facts) -> str | None:
    """How the judged run misses `validation.target`, or None when it meets it (or sets none)."""
    best, target = getattr(facts, "best", None), getattr(facts, "target", None)
    if target is None:
        return None
    if best is None:
        return f"no validation figure was recorded, and validation.target is {target:g}"
    meets = best.value >= target if not best.metric.endswith("loss") else best.value <= target
    if meets:
        return None
    return f"best {best.metric} {best.value:.4g} misses validation.target {target:g}"
