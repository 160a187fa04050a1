"""`wf report PHASE`: the phase's report rendered again from its recorded evidence and run files.
"""

from __future__ import annotations

from typing import Any

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
from mlflow_core.workflow.phases import continue_command, load_phase
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
        latest = next((r for r in reversed(state.runs) if r.phase == phase), None)
        if latest is not None and latest.status in ("interrupted", "running") and (
                evidence is None or evidence.run_id != latest.run_id):
            raise UserInputError(stopped_run_progress(project, phase, latest)
                                 + (f" The report of run {evidence.run_id} before it is unchanged."
                                    if evidence is not None else ""),
                                 hint=f"Its report is written when it ends: continue it with "
                                      f"{continue_command(phase)}.")
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


def stopped_run_progress(project: Project, phase: str, run: Any) -> str:
    """What a run that stopped before its outcome holds so far, from the metrics each of its
    trainings wrote (its own, each trial's, each comparison or seed run's): the partial results."""
    from mlflow_core.workflow import jsontext
    from mlflow_core.workflow.units import metric_value

    run_dir = project.inside(run.dir)
    found = sorted(run_dir.glob("logs/metrics.json")) + sorted(run_dir.glob("*/*/logs/metrics.json"))
    lines = []
    for path in found[:40]:
        try:
            metrics = jsontext.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(metrics, dict):
            continue
        name = path.parent.parent.relative_to(run_dir).as_posix()
        best = metrics.get("best") or {}
        shown = (f"best {best.get('metric')} {metric_value(best.get('value'), str(best.get('metric')))} at epoch "
                 f"{best.get('epoch')}" if best else "no validated epoch")
        lines.append(f"{'the run' if name == '.' else name}: {len(metrics.get('epochs') or [])} epochs, "
                     f"{metrics.get('status', '?')}, {shown}")
    what = "; ".join(lines) if lines else "nothing trained to the end of an epoch yet"
    more = f" (and {len(found) - 40} more)" if len(found) > 40 else ""
    return f"{phase} run {run.run_id} stopped before its outcome ({run.status}); so far: {what}{more}."
