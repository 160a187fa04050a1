"""`wf status`: where the project stands, each gate's progress and the latest runs (no torch)."""

from __future__ import annotations

from typing import Any

from mlflow_core.errors import WfError
from mlflow_core.workflow import lock
from mlflow_core.workflow.fingerprints import Current
from mlflow_core.workflow.gates import entry_verdict, evaluate_gate
from mlflow_core.workflow.phases import PHASE_ORDER, RESUMABLE_PHASES, load_phase
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import ProjectState, gone_runs, load_state


def project_status(project: Project, runs: int = 5) -> dict[str, Any]:
    state = load_state(project)
    busy = lock.held(project)
    gone_runs(project, state, lock_held=busy)  # shown as what they are (the next command records it)
    phases = []
    gates, errors = {}, {}
    now = Current(project.root)  # the config parsed and the data walked once for every gate
    for name in PHASE_ORDER:
        try:
            gates[name] = evaluate_gate(project, state, name, now)
        except WfError as exc:
            errors[name] = exc.message
    for name in PHASE_ORDER:
        definition = load_phase(name, project.root)
        latest = state.latest_run(name)
        gate = gates.get(name)
        progress = {"passed": False, "error": errors[name]} if gate is None else {
            "passed": gate.passed, "checked": sum(i.checked for i in gate.items), "total": len(gate.items),
            "checklist": gate.path, "open": [i.id for i in gate.open_items],
            "drift": [d.to_json() for d in gate.drift], "run": gate.run,
            "waived": [{"id": i.id, **(i.waived or {})} for i in gate.waived_items]}
        entry = entry_verdict(project, state, name, gates) if name != state.current_phase else None
        phases.append({"name": name, "number": definition.number, "title": definition.title,
                       "current": name == state.current_phase,
                       "last_run": latest.model_dump(mode="json") if latest else None,
                       "gate": progress,
                       "can_start": entry.allowed if entry else True,
                       "blocked_because": None if entry is None or entry.allowed else entry.reason})
    return {
        "project": str(project.root),
        "current_phase": state.current_phase,
        "decision": state.decision.model_dump(mode="json") if state.decision else None,
        "phases": phases,
        "runs": [r.model_dump(mode="json") for r in state.runs[-runs:]][::-1],
        "overrides": [e.model_dump(mode="json") for e in state.overrides()],
        "release": next((e.model_dump(mode="json") for e in reversed(state.history) if e.event == "release"), None),
        "next": suggest_next(_focus(state), phases, busy),
    }


def _focus(state: ProjectState) -> str | None:
    """The phase the next step is about: the project's current one, unless a later run has not ended
    (the project moves to a phase when its run records an outcome, and an interrupted run is resumed
    before anything else)."""
    latest = state.runs[-1] if state.runs else None
    if latest is not None and latest.status in ("interrupted", "running") and latest.phase in RESUMABLE_PHASES:
        return latest.phase
    return state.current_phase


def suggest_next(current: str | None, phases: list[dict[str, Any]], busy: bool = False) -> str:
    by_name = {p["name"]: p for p in phases}
    if current is None:
        return "wf phase setup"
    phase = by_name[current]
    run = phase["last_run"]
    # interrupted, or "running" with no wf command holding the project: its process died
    stopped = run is not None and (run["status"] == "interrupted" or (run["status"] == "running" and not busy))
    if stopped and current in RESUMABLE_PHASES:
        # an exact resume needs as many processes as wrote the resume point
        processes = ((run.get("summary") or {}).get("resume") or {}).get("world_size", 1)
        ddp = f" --nproc-per-node {processes}" if processes > 1 else ""
        return f"wf phase {current} --resume{ddp}   (run {run['run_id']} stopped before its end)"
    if run is not None and run["status"] == "running":
        return f"wait: run {run['run_id']} is in progress (`wf status` again later)"
    if run is None or stopped:
        return f"wf phase {current}"
    # a gate on the path that re-opened comes first: the phases after it rest on it
    for p in phases:
        if p["gate"].get("drift") and p["last_run"] is not None:
            changed = "; ".join(d["detail"] for d in p["gate"]["drift"])
            return f"wf phase {p['name']}   (its gate re-opened: {changed})"
    gate = phase["gate"]
    if not gate.get("passed"):
        return f"wf gate check {current}   (items left: {', '.join(gate.get('open', []))})"
    for p in phases:
        if p["name"] != current and p["can_start"] and p["name"] != "setup":
            return f"wf phase {p['name']}"
    return f"wf gate check {current}"
