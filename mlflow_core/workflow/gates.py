"""Gates: a phase's gate is its exit checklist, verified against recorded evidence.

`evaluate_gate` and `entry_verdict` are pure: they read files and return verdicts. The state machine
and the CLI decide what to do with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow_core.content import content_path
from mlflow_core.workflow.checklist import Checklist, parse_checklist
from mlflow_core.workflow.checks import CHECKS, CheckContext, run_check
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.phases import DECISIONS, load_phase, predecessors
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import ProjectState


@dataclass(frozen=True)
class ItemVerdict:
    id: str
    text: str
    kind: str  # auto | manual
    checked: bool  # auto: what the evidence says; manual: the tick in the file
    evidence: str
    line: int


@dataclass(frozen=True)
class GateVerdict:
    phase: str
    checklist: str
    path: str
    passed: bool
    items: list[ItemVerdict]
    overrides: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open_items(self) -> list[ItemVerdict]:
        return [i for i in self.items if not i.checked]

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "checklist": self.checklist, "path": self.path, "passed": self.passed,
                "items": [asdict(i) for i in self.items], "overrides": self.overrides}


def load_checklist(project: Project, name: str) -> Checklist:
    """The project's copy of checklist `name` (the packaged one if the project has none)."""
    path = project.checklist_path(name)
    if not path.is_file():
        path = content_path("checklists", f"{name}.md")
    return parse_checklist(path, name, known_checks=set(CHECKS))


def evaluate_gate(project: Project, state: ProjectState, phase: str) -> GateVerdict:
    definition = load_phase(phase, project.root)
    checklist = load_checklist(project, definition.exit_checklist)
    evidence = read_evidence(project, phase)
    items = []
    for item in checklist.items:
        if item.auto:
            result = run_check(item.auto, CheckContext(project, state, phase, evidence))
            detail = result.detail
            if item.checked and not result.passed:
                detail += " (ticked in the file, but the evidence does not support it)"
            items.append(ItemVerdict(item.id, item.text, "auto", result.passed, detail, item.line))
        else:
            items.append(ItemVerdict(item.id, item.text, "manual", item.checked,
                                     "ticked by a person" if item.checked else
                                     f"not ticked; tick it with `wf checklist tick {checklist.name} {item.id}`",
                                     item.line))
    overrides = [e.model_dump(mode="json") for e in state.overrides()]
    return GateVerdict(phase, checklist.name, project.relative(checklist.path),
                       all(i.checked for i in items), items, overrides)


@dataclass(frozen=True)
class EntryVerdict:
    phase: str
    allowed: bool
    reason: str
    gate: GateVerdict | None = None  # the gate that was checked, if any
    unblock: str | None = None  # the command that unblocks this step
    origin: str | None = None  # the phase whose gate admits this one (None for setup)


def entry_verdict(project: Project, state: ProjectState, phase: str,
                  gates: dict[str, GateVerdict] | None = None) -> EntryVerdict:
    """May `phase` start now? A phase may start only when the gate of the phase before it passes.
    `gates` holds verdicts already evaluated (by phase), so that callers asking about several
    phases evaluate each gate once."""
    before = predecessors(phase, project.root)
    if not before:
        return EntryVerdict(phase, True, f"{phase} has no entry gate")
    # Re-running a phase is judged from where it was entered; a fresh project stands before setup.
    origin = state.entered_from.get(phase) if state.current_phase == phase else state.current_phase
    origin = origin or "setup"
    if origin not in before:
        return EntryVerdict(phase, False, f"{phase} cannot follow {origin}; it follows "
                            f"{' or '.join(before)}",
                            unblock=_next_step_hint(project, state, origin), origin=origin)
    gate = gates[origin] if gates and origin in gates else evaluate_gate(project, state, origin)
    required = load_phase(origin, project.root).exit_items_for.get(phase)
    open_items = [i for i in gate.open_items if required is None or i.id in required]
    if open_items:
        left = ", ".join(i.id for i in open_items)
        return EntryVerdict(phase, False, f"the {origin} gate is closed: {gate.path} has items left: {left}",
                            gate, unblock=f"wf gate check {origin}", origin=origin)
    if len(load_phase(origin, project.root).next) > 1:
        decision = state.decision
        if decision is None or decision.phase != origin or decision.next_phase != phase:
            chosen = f"the decision recorded is '{decision.choice}' → {decision.next_phase}" if (
                decision and decision.phase == origin) else "no decision is recorded"
            verb = next(v for v, p in DECISIONS.items() if p == phase)
            return EntryVerdict(phase, False, f"{chosen}", gate, unblock=f"wf decide {verb} --reason \"…\"",
                                origin=origin)
    scope = "passes" if required is None else f"passes for {phase} ({', '.join(required)})"
    return EntryVerdict(phase, True, f"the {origin} gate {scope}", gate, origin=origin)


def _next_step_hint(project: Project, state: ProjectState, origin: str) -> str:
    options = load_phase(origin, project.root).next
    return " or ".join(f"wf phase {p}" for p in options) if options else "wf status"
