"""The project's runs, newest first, and what differs between two of them (`wf runs`).

Read from what wf recorded: `.wf/state.json` for each run, and for the config a training run used,
its `logs/metrics.json`. Nothing here imports torch."""

from __future__ import annotations

from typing import Any

from mlflow_core.errors import UserInputError
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.fingerprints import flatten
from mlflow_core.workflow.phases import PHASE_ORDER
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import load_run_metrics
from mlflow_core.workflow.state import ProjectState, RunRecord, load_state


def run_rows(project: Project, phase: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """One row per run, newest first: id, phase, status, passed, start, duration, best metric."""
    if phase is not None and phase not in PHASE_ORDER:
        raise UserInputError(f"--phase {phase!r}: not a phase; phases: {', '.join(PHASE_ORDER)}.")
    runs = [r for r in load_state(project).runs if phase is None or r.phase == phase]
    judged = {}
    for name in PHASE_ORDER:  # the run each gate judges: the one its evidence was recorded from
        evidence = read_evidence(project, name)
        if evidence is not None and evidence.run_id:
            judged[name] = evidence.run_id
    rows = []
    for run in reversed(runs):
        summary = run.summary or {}
        rows.append({"run_id": run.run_id, "phase": run.phase, "status": run.status, "passed": run.passed,
                     "started_at": run.started_at, "finished_at": run.finished_at,
                     "duration_s": summary.get("duration_s"), "best": summary.get("best"),
                     "epochs": summary.get("epochs_completed"), "dir": run.dir,
                     "judged": judged.get(run.phase) == run.run_id})
    return rows[:last] if last else rows


def find_run(project: Project, ref: str, state: ProjectState | None = None) -> RunRecord:
    """A run by its id or a unique prefix of it."""
    runs = (state or load_state(project)).runs
    exact = [r for r in runs if r.run_id == ref]
    matches = exact or [r for r in runs if r.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserInputError(f"no run {ref!r} in {project.relative(project.state_path)}.",
                             hint="`wf runs` lists the run ids.")
    raise UserInputError(f"{ref!r} matches {len(matches)} runs ({', '.join(r.run_id for r in matches[:5])}"
                         f"{' …' if len(matches) > 5 else ''}); give more of the id.")


def run_config(project: Project, run: RunRecord) -> dict[str, Any]:
    """The resolved config a training run used, as recorded in its logs/metrics.json."""
    path = project.inside(run.dir) / "logs" / "metrics.json"
    if not path.is_file():
        raise UserInputError(f"{project.relative(path)}: not found; run {run.run_id} ({run.phase}) recorded no "
                             "training config of its own.", hint="Compare baseline runs, which each record one.")
    return load_run_metrics(path).config


def config_diff(project: Project, ref_a: str, ref_b: str) -> dict[str, Any]:
    """The dotted config keys whose values differ between two runs, with both values."""
    run_a, run_b = find_run(project, ref_a), find_run(project, ref_b)
    a, b = flatten(run_config(project, run_a)), flatten(run_config(project, run_b))
    missing = object()
    changed = [{"key": key, "a": a.get(key), "b": b.get(key)} for key in sorted(set(a) | set(b))
               if a.get(key, missing) != b.get(key, missing)]
    return {"a": run_a.run_id, "b": run_b.run_id, "changed": changed,
            "best": {run_a.run_id: (run_a.summary or {}).get("best"), run_b.run_id: (run_b.summary or {}).get("best")}}
