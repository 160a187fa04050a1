"""`wf checklist tick / untick / waive / unwaive`: a checklist's manual items and waivers, each on
the record (who, when, why).
"""

from __future__ import annotations

from typing import Any

from mlflow_core.errors import (
    ChecklistError,
    UserInputError,
)
from mlflow_core.workflow.checklist import set_marks
from mlflow_core.workflow.gates import load_checklist
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import (
    PHASE_ORDER,
    load_phase,
    phase_gated_by,
    required_items,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import (
    load_state,
    save_state,
    who,
)


def waive(project: Project, checklist_name: str, item_id: str, reason: str, waived: bool = True) -> str:
    """`wf checklist waive NAME ID --reason`: drop an item of a gate on purpose, on the record
    (who, when, why), shown by every gate check, status and later report. Returns the phase."""
    if waived and not reason.strip():
        raise UserInputError("--reason is required: a waiver says why the item does not apply.")
    return _waive(project, "waive" if waived else "unwaive", checklist_name, item_id, reason)


@locked("wf checklist {verb} {checklist_name} {item_id}")
def _waive(project: Project, verb: str, checklist_name: str, item_id: str, reason: str) -> str:
    waived = verb == "waive"
    state = load_state(project)
    phase = phase_gated_by(checklist_name, project.root)
    if phase is None:
        raise UserInputError(f"{checklist_name!r} gates no phase; checklists that do: "
                             f"{', '.join(load_phase(p, project.root).exit_checklist for p in PHASE_ORDER)}.")
    checklist = load_checklist(project, checklist_name)
    known = {i.id for i in checklist.items} | {r.id for r in required_items(phase, project.root)}
    if item_id not in known:
        raise UserInputError(f"{project.relative(checklist.path)}: no item {item_id!r} in the {phase} gate; "
                             f"items: {', '.join(sorted(known))}.")
    active = state.waivers(checklist_name)
    if not waived and item_id not in active:
        raise UserInputError(f"{checklist_name} {item_id} is not waived.", hint=f"`wf gate check {phase}` shows "
                             "the waivers on record.")
    if waived:
        state.record("checklist_waive", checklist=checklist_name, item=item_id, reason=reason.strip(), by=who())
    else:
        state.record("checklist_unwaive", checklist=checklist_name, item=item_id, by=who())
    save_state(project, state)
    return phase


@locked("wf checklist tick {checklist_name} {item_id}")
def tick(project: Project, checklist_name: str, item_id: str, checked: bool = True, note: str | None = None,
         by: dict[str, Any] | None = None) -> None:
    """Tick (or untick) a manual item, recording who did: a person through `wf checklist tick`, or
    `by`, a command acting for the user (quickstart), which every gate check then names."""
    state = load_state(project)
    checklist = load_checklist(project, checklist_name)
    item = checklist.item(item_id)
    if item.auto:
        phase = phase_gated_by(checklist_name, project.root)
        raise ChecklistError(f"{checklist.path}: line {item.line}: {item_id!r} is verified by wf from recorded "
                             "evidence and cannot be ticked by hand.",
                             hint=(f"`wf phase {phase}` records it; `wf gate check {phase}` shows what it found."
                                   if phase else "A phase records it; `wf gate check` shows what it found."))
    if not project.checklist_path(checklist_name).is_file():
        raise ChecklistError(f"{project.checklist_path(checklist_name)}: not in the project.",
                             hint="`wf init` copies the checklists into the project.")
    set_marks(checklist.path, {item_id: checked})
    state.record("checklist_tick" if checked else "checklist_untick", checklist=checklist_name,
                 item=item_id, by=by or {"kind": "person", "name": who(), "via": "wf checklist tick"},
                 **({"note": note} if note else {}))
    save_state(project, state)
