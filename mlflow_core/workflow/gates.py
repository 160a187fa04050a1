"""Gates: a phase's gate is its exit checklist, verified against recorded evidence and against the
fingerprints of what the phase verified (config, data, code, packages).

`evaluate_gate` and `entry_verdict` are pure: they read files and return verdicts. The state machine
and the CLI decide what to do with them. A gate passes when every item of its checklist holds (auto
items from evidence, manual ones ticked, required ones present or waived on the record) and nothing
it verified has drifted since. A phase may start only when every gate on the project's path to it
holds now, not only the one just before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlflow_core.content import content_path, packaged_root
from mlflow_core.errors import ChecklistError, UserInputError, did_you_mean
from mlflow_core.workflow import fingerprints
from mlflow_core.workflow.binding import binding_problems, leads_back_to
from mlflow_core.workflow.checklist import Checklist, ChecklistItem, parse_checklist
from mlflow_core.workflow.checks import CHECKS, CheckContext, applies, run_check
from mlflow_core.workflow.evidence import Evidence, evidence_path, read_evidence
from mlflow_core.workflow.phases import (
    DECISIONS,
    PHASES,
    RequiredItem,
    load_phase,
    predecessors,
    required_items,
)
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import Event, ProjectState

SELECTED_BY_DEFAULT = "the latest run that ran to its end"


@dataclass(frozen=True)
class ItemVerdict:
    id: str
    text: str
    kind: str  # auto | manual
    checked: bool  # satisfied: auto, the evidence says so; manual, ticked; or waived on the record
    evidence: str
    line: int  # 0: not in the checklist (a required item that is missing)
    required: bool = False  # the phase definition requires it
    ticked_by: dict[str, Any] | None = None  # who ticked it: wf (auto), a person, or a command for the user
    waived: dict[str, Any] | None = None  # {by, time, reason} when waived with `wf checklist waive`


@dataclass(frozen=True)
class GateVerdict:
    phase: str
    checklist: str
    path: str
    passed: bool
    items: list[ItemVerdict]
    overrides: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] | None = None  # the run the gate judges, and how it was selected
    drift: list[fingerprints.Drift] = field(default_factory=list)  # what changed since the gate verified it
    notes: list[str] = field(default_factory=list)  # what could not be compared here
    verified_at: dict[str, Any] | None = None  # the git commit the phase ran at (provenance)

    @property
    def open_items(self) -> list[ItemVerdict]:
        return [i for i in self.items if not i.checked]

    @property
    def waived_items(self) -> list[ItemVerdict]:
        return [i for i in self.items if i.waived]

    def rerun(self) -> str:
        return fingerprints.rerun_hint(self.phase)

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "checklist": self.checklist, "path": self.path, "passed": self.passed,
                "run": self.run, "items": [asdict(i) for i in self.items], "overrides": self.overrides,
                "drift": [d.to_json() for d in self.drift], "notes": self.notes,
                "verified_at": self.verified_at}


def load_checklist(project: Project, name: str) -> Checklist:
    """The project's copy of checklist `name` (the packaged one if the project has none)."""
    path = project.checklist_path(name)
    if not path.is_file():
        path = packaged_root() / "checklists" / f"{name}.md"
        if not path.is_file():
            raise _unknown_checklist(project, name)
    return parse_checklist(path, name, known_checks=set(CHECKS))


def _unknown_checklist(project: Project, name: str) -> ChecklistError:
    """No checklist `name`: the ones there are, and the command meant when `name` is an item's id
    (`wf checklist tick data_documented` for `wf checklist tick reproducibility data_documented`)."""
    names = sorted({p.stem for d in (project.checklists_dir, packaged_root() / "checklists")
                    for p in d.glob("*.md")})
    holders = [n for n in names if any(i.id == name for i in load_checklist(project, n).items)]
    suggestion = did_you_mean(name, names)
    if holders:
        hint = f"{name} is an item of {holders[0]}: `wf checklist tick {holders[0]} {name}`."
    elif suggestion:
        hint = f"{suggestion.strip()} `wf checklist show NAME` lists its items."
    else:
        hint = "`wf checklist show NAME` lists a checklist's items."
    return ChecklistError(f"checklist not found: {name!r} (the checklists in "
                          f"{project.relative(project.checklists_dir)}/ are: {', '.join(names)}).", hint=hint)


def evaluate_gate(project: Project, state: ProjectState, phase: str,
                  now: fingerprints.Current | None = None, recorded: Evidence | None = None) -> GateVerdict:
    """The gate of `phase` as it stands now. `now` is the project's current config and data, shared
    by callers that evaluate several gates so that each is read once; `recorded`, the phase's
    evidence when the caller has just written it (else it is read)."""
    now = now or fingerprints.Current(project.root)
    definition = load_phase(phase, project.root)
    checklist = load_checklist(project, definition.exit_checklist)
    refuse_checks_that_cannot_apply(project, phase, definition, checklist)
    evidence = recorded if recorded is not None else read_evidence(project, phase)
    waivers = state.waivers(checklist.name)
    ticks = state.last_ticks(checklist.name)
    required = {r.id: r for r in required_items(phase, project.root)}
    ctx = CheckContext(project, state, phase, evidence)
    items = [_item_verdict(item, required.get(item.id), ctx, checklist, waivers.get(item.id), ticks.get(item.id))
             for item in checklist.items]
    present = {i.id for i in checklist.items}
    items += [_missing_item(req, checklist, waivers.get(req.id), ctx)
              for req in required.values() if req.id not in present]
    drift, notes, verified_at = _drift(project, state, phase, evidence, now)
    items = _contradicted_by_drift(items, drift)
    return GateVerdict(phase, checklist.name, project.relative(checklist.path),
                       all(i.checked for i in items) and not drift, items,
                       [e.model_dump(mode="json") for e in state.overrides()],
                       _selected_run(state, phase, evidence), drift, notes, verified_at)


def refuse_checks_that_cannot_apply(project: Project, phase: str, definition: Any, checklist: Checklist) -> None:
    """A check judges the evidence of the phases it was written for: a setup check on a training run's
    evidence has nothing to read. A project's phase definition or checklist that asks for one is bad
    input naming the file and the key or line, never a verdict (nor a traceback)."""
    facts = PHASES[phase].facts_name
    phase_file = content_path("phases", f"{phase}.yaml", project.root)
    where = project.relative(phase_file)
    packaged = load_phase(phase).exit_checklist
    for item in checklist.items:
        if item.auto and not applies(item.auto, facts):
            if checklist.name != packaged:
                raise UserInputError(f"{where}: exit_checklist: {checklist.name!r} is not a checklist the {phase} gate "
                                     f"can judge (its item {item.id} is verified by `{item.auto}`, a check of another "
                                     f"phase's evidence).", hint=f"Set `exit_checklist: {packaged}` again.")
            raise ChecklistError(f"{project.relative(checklist.path)}:{item.line}: item {item.id} names `auto: "
                                 f"{item.auto}`, a check of another phase's evidence: the {phase} gate cannot "
                                 "verify it.", hint="Name one of the checks the phase's own items use, or make "
                                 "the item manual (drop `auto: …`).")
    named = [("success_criteria", c.id, c.check) for c in definition.success_criteria]
    named += [("required_items", r.id, r.check) for r in definition.required_items if r.check]
    for key, item_id, name in named:
        if name not in CHECKS:
            raise UserInputError(f"{where}: {key}: {item_id} names the check `{name}`, which wf does not have."
                                 + did_you_mean(name, CHECKS), hint="`wf checklist show` lists the checks in use.")
        if not applies(name, facts):
            raise UserInputError(f"{where}: {key}: {item_id} names `{name}`, a check of another phase's evidence: "
                                 f"the {phase} gate cannot verify it.",
                                 hint=f"Restore it from the packaged phases/{phase}.yaml (`wf init` writes one).")


# the items whose claim is about what a drift says changed: never ✔ beside a drift that contradicts them
CLAIMS_ABOUT = {"config_valid": "config", "data_pipeline_checked": "data"}  # by item id (required items)


def _contradicted_by_drift(items: list[ItemVerdict], drift: list[fingerprints.Drift]) -> list[ItemVerdict]:
    changed = {d.kind: d.detail for d in drift}
    out = []
    for item in items:
        kind = CLAIMS_ABOUT.get(item.id)
        if kind in changed and item.checked and not item.waived:
            item = replace(item, checked=False, ticked_by=None,
                           evidence=f"{item.evidence}; but not what the gate verified any more: {changed[kind]}")
        out.append(item)
    return out


def _waiver(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {"by": getattr(event, "by", None), "time": event.time, "reason": getattr(event, "reason", "")}


def _waived_text(waiver: dict[str, Any]) -> str:
    return f"waived by {waiver['by']} at {waiver['time']}: {waiver['reason']}"


def _item_verdict(item: ChecklistItem, req: RequiredItem | None, ctx: CheckContext, checklist: Checklist,
                  waiver_event: Event | None, tick: Event | None) -> ItemVerdict:
    waiver = _waiver(waiver_event)
    where = f"{ctx.project.relative(checklist.path)}:{item.line}"
    if req is not None and req.check != item.auto:
        want = f"verified by wf's check `{req.check}`" if req.check else "ticked by a person"
        has = f"`auto: {item.auto}`" if item.auto else "a manual tick"
        detail = (f"the {ctx.phase} gate requires this item {want}; {where} makes it {has}. Restore its comment "
                  f"(`<!-- id: {item.id}{'; auto: ' + req.check if req.check else ''} -->`) or waive it")
        return ItemVerdict(item.id, item.text, "auto" if req.check else "manual", bool(waiver),
                           _waived_text(waiver) + f" ({detail})" if waiver else detail, item.line, True,
                           None, waiver)
    if item.auto:
        result = run_check(item.auto, ctx)
        detail = result.detail
        if item.checked and not result.passed:
            detail += " (ticked in the file, but the evidence does not support it)"
        by = {"kind": "wf", "name": f"wf phase {ctx.phase}", "via": "recorded evidence"} if result.passed else None
        if waiver:
            detail = f"{_waived_text(waiver)} (the check says: {detail})"
        return ItemVerdict(item.id, item.text, "auto", result.passed or bool(waiver), detail, item.line,
                           req is not None, by, waiver)
    by = _ticked_by(item, tick) if item.checked else None
    if item.checked:
        detail = _describe_tick(by)
    else:
        detail = f"not ticked; tick it with `wf checklist tick {checklist.name} {item.id}`"
    if waiver:
        detail = f"{_waived_text(waiver)} ({detail})"
    return ItemVerdict(item.id, item.text, "manual", item.checked or bool(waiver), detail, item.line,
                       req is not None, by, waiver)


def _ticked_by(item: ChecklistItem, tick: Event | None) -> dict[str, Any]:
    """Who ticked a manual item: the wf command that recorded the tick, when the file still shows it,
    else a person editing the file."""
    if tick is not None and tick.event == "checklist_tick":
        by = getattr(tick, "by", None) or {"kind": "person", "name": None}
        return {**by, "via": by.get("via") or "wf checklist tick", "time": tick.time}
    return {"kind": "person", "name": None, "via": "an edit of the checklist file", "time": None}


def _describe_tick(by: dict[str, Any]) -> str:
    if by["kind"] == "command":
        return f"ticked by {by['name']} at {by['time']}, a command acting for you, not by a person"
    name = f" ({by['name']})" if by.get("name") else ""
    when = f" at {by['time']}" if by.get("time") else ""
    return f"ticked by a person{name}, with {by['via']}{when}" if by.get("time") else \
        f"ticked by a person{name}, by editing the checklist file"


def _missing_item(req: RequiredItem, checklist: Checklist, waiver_event: Event | None,
                  ctx: CheckContext) -> ItemVerdict:
    waiver = _waiver(waiver_event)
    kind = "auto" if req.check else "manual"
    if waiver:
        return ItemVerdict(req.id, req.text, kind, True, _waived_text(waiver) + " (not in the checklist)", 0, True,
                           None, waiver)
    line = f"- [ ] {req.text} <!-- id: {req.id}{'; auto: ' + req.check if req.check else ''} -->"
    return ItemVerdict(req.id, req.text, kind, False,
                       f"missing from {ctx.project.relative(checklist.path)}: the {ctx.phase} gate requires it. "
                       f"Restore the line `{line}`, or drop it on the record with "
                       f"`wf checklist waive {checklist.name} {req.id} --reason \"…\"`", 0, True)


def _selected_run(state: ProjectState, phase: str, evidence: Evidence | None) -> dict[str, Any] | None:
    """The run the gate judges (the one whose evidence is recorded) and how it came to be the one."""
    if evidence is None or not evidence.run_id:
        return None
    run = state.run(evidence.run_id)
    return {"run_id": evidence.run_id, "status": run.status if run else None,
            "selected_by": selected_by(state, phase, evidence.run_id)}


def selected_by(state: ProjectState, phase: str, run_id: str) -> str:
    """How `run_id` came to be the run the gate of `phase` judges."""
    chosen = next((e for e in reversed(state.history) if e.event == "run_selected"
                   and getattr(e, "phase", None) == phase), None)
    if chosen is not None and getattr(chosen, "run_id", None) == run_id:
        return f"chosen with `wf runs select` by {getattr(chosen, 'by', '?')} at {chosen.time}"
    return SELECTED_BY_DEFAULT


def _approvals(project: Project, state: ProjectState, phase: str, judged: Evidence) -> list[dict[str, Any]]:
    """The configs that gates after `phase` on the project's path approved: a config in force that
    one of them approved (the optimized config, a fix that diagnostics verified and a new baseline
    trained) does not re-open `phase`'s gate. Only evidence bound to this project whose history leads
    back to `phase`'s own evidence approves anything: a later evidence edited to approve a config
    approves nothing."""
    path = state.path()
    if phase not in path:
        return []
    out = []
    for later in path[path.index(phase) + 1:]:
        evidence = read_evidence(project, later)
        if evidence is None or not evidence.intact or binding_problems(project, state, later, evidence):
            continue
        if evidence.facts.fingerprints and leads_back_to(project, evidence, judged):
            out += evidence.facts.fingerprints.approved_configs()
    return out


def _drift(project: Project, state: ProjectState, phase: str, evidence: Evidence | None,
           now: fingerprints.Current) -> tuple[list[fingerprints.Drift], list[str], dict[str, Any] | None]:
    if evidence is None or not evidence.intact:
        return [], [], None  # the checks already say that nothing (intact) was recorded
    recorded = evidence.facts.fingerprints
    if not recorded:
        return [], [f"{phase} was recorded by a wf without fingerprints: run `wf phase {phase}` again to have "
                    "its config, data and code verified"], None
    drift, notes = fingerprints.drift(recorded.model_dump(mode="json"), phase, now,
                                      approved_later=_approvals(project, state, phase, evidence))
    return binding_problems(project, state, phase, evidence) + drift, notes, recorded.code.get("git")


@dataclass(frozen=True)
class EntryVerdict:
    phase: str
    allowed: bool
    reason: str
    gate: GateVerdict | None = None  # the gate that was checked, if any
    unblock: str | None = None  # the command that unblocks this step
    origin: str | None = None  # the phase whose gate admits this one (None for setup)

    def unblock_hint(self) -> str:
        """What to do first: see what is left in a gate, or run the step that is missing."""
        return (f"Run `{self.unblock}` to see what is left" if (self.unblock or "").startswith("wf gate check")
                else f"Run `{self.unblock}`")


def entry_verdict(project: Project, state: ProjectState, phase: str,
                  gates: dict[str, GateVerdict] | None = None) -> EntryVerdict:
    """May `phase` start now? Only when every gate on the project's path to it holds now: the gate
    of the phase before it (with the decision to come here) and every gate before that, none of
    whose config, data or code has drifted. `gates` holds verdicts already evaluated (by phase)."""
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
    gates = dict(gates or {})
    now = fingerprints.Current(project.root)

    def gate_of(name: str) -> GateVerdict:
        if name not in gates:
            gates[name] = evaluate_gate(project, state, name, now)
        return gates[name]

    # the path to `phase`: the one to the origin (re-running a phase: to where it was entered from)
    path = state.path()
    if origin in path:
        path = path[: path.index(origin) + 1]
    else:
        path = ["setup", origin] if origin != "setup" else ["setup"]
    for earlier, following in zip(path, [*path[1:], phase]):
        gate = gate_of(earlier)
        required = load_phase(earlier, project.root).exit_items_for.get(following)
        open_items = [i for i in gate.open_items if required is None or i.id in required]
        which = f"the {earlier} gate" + ("" if earlier == origin else f" (on the path to {phase})")
        if gate.drift:
            changed = "; ".join(d.detail for d in gate.drift)
            return EntryVerdict(phase, False, f"{which} re-opened, because {changed}; {gate.rerun()}", gate,
                                unblock=f"wf gate check {earlier}", origin=origin)
        if open_items:
            left = ", ".join(i.id for i in open_items)
            return EntryVerdict(phase, False, f"{which} is closed: {gate.path} has items left: {left}",
                                gate, unblock=f"wf gate check {earlier}", origin=origin)
    gate = gate_of(origin)
    required = load_phase(origin, project.root).exit_items_for.get(phase)
    if len(load_phase(origin, project.root).next) > 1:
        decision = state.decision
        if decision is None or decision.phase != origin or decision.next_phase != phase:
            chosen = f"the decision recorded is '{decision.choice}' → {decision.next_phase}" if (
                decision and decision.phase == origin) else "no decision is recorded"
            verb = next(v for v, p in DECISIONS.items() if p == phase)
            return EntryVerdict(phase, False, f"{chosen}", gate, unblock=f"wf decide {verb} --reason \"…\"",
                                origin=origin)
    scope = "passes" if required is None else f"passes for {phase} ({', '.join(required)})"
    chain = "" if len(path) == 1 else f", and every gate before it on the path ({', '.join(path[:-1])}) holds"
    return EntryVerdict(phase, True, f"the {origin} gate {scope}{chain}", gate, origin=origin)


def chain_verdicts(project: Project, state: ProjectState) -> list[GateVerdict]:
    """`wf gate check --all`: every gate on the project's path to where it stands now, and the gate of
    every other phase that recorded evidence or finished a run: `current_phase` is a line in a file
    that a pull request can edit, and rewinding it must not hide a committed failure."""
    now = fingerprints.Current(project.root)
    return [evaluate_gate(project, state, name, now) for name in phases_on_record(project, state)]


def phases_on_record(project: Project, state: ProjectState) -> list[str]:
    """The project's path, then the other phases with evidence or a finished run, in phase order."""
    path = state.path() or ["setup"]
    recorded = [name for name in PHASES if name not in path and (
        evidence_path(project, name).exists() or any(r.phase == name and r.finished_at for r in state.runs))]
    return [*path, *recorded]


def _next_step_hint(project: Project, state: ProjectState, origin: str) -> str:
    options = load_phase(origin, project.root).next
    return " or ".join(f"wf phase {p}" for p in options) if options else "wf status"
