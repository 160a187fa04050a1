"""A phase's MLflow run (`monitoring.mlflow`), opened when the phase starts and ended with its
outcome: the report and the figures it shows, metrics.json and the config as artifacts, the phase's
figures as metrics, its outcome and the fingerprints as tags (see monitoring/mlflow_runs.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import ProjectState, RunRecord

FIGURE = re.compile(r"\]\((figures/[^)\s]+\.png)\)")  # an image a report shows, relative to reports/


def open_phase_tracking(project: Project, cfg: Any, state: ProjectState, run: RunRecord, verified: dict[str, Any],
                        resuming: bool, say: Any = None) -> Any:
    """The phase's MLflow run, its id kept in the run record (so that `--resume` continues it)."""
    if not cfg.monitoring.mlflow:
        return None
    from mlflow_core.monitoring.mlflow_runs import PhaseRun

    commit = ((verified.get("code") or {}).get("git") or {}).get("commit")
    tags = {"wf.config_sha256": (verified.get("config") or {}).get("sha256"),
            "wf.data_sha256": (verified.get("data") or {}).get("sha256"),
            **({"mlflow.source.git.commit": commit} if commit else {})}
    tracking = PhaseRun.start(project.root, cfg, run.phase, run.run_id, project.inside(run.dir),
                              {k: v for k, v in tags.items() if v}, existing=run.mlflow_run_id if resuming else None,
                              notify=say, data=verified.get("data"), ended=ended_mlflow_runs(state))
    if tracking is not None:
        run.mlflow_run_id, run.mlflow_uri = tracking.run_id, tracking.store.uri
    return tracking


def ended_mlflow_runs(state: ProjectState) -> dict[str, str]:
    """The MLflow runs of the project's wf runs that have ended, with the MLflow status each ended
    with (what a run left RUNNING by a tracking outage is ended as)."""
    from mlflow_core.monitoring.mlflow_runs import MLFLOW_STATUS

    return {r.mlflow_run_id: MLFLOW_STATUS.get(r.status, "FINISHED") for r in state.runs
            if r.mlflow_run_id and r.finished_at and r.status != "running"}


def end_phase_tracking(tracking: Any, status: str, project: Project | None = None, run: RunRecord | None = None,
                       facts: Any = None) -> None:
    """FINISHED with the phase's files, its figures as metrics and its outcome, or FAILED / KILLED as
    the run ended. No gate verdict is tagged: a gate opens and closes with ticks and commits made
    after the run, and a tag written now would go stale (`wf gate check` says the verdict)."""
    if tracking is None:
        return
    if status != "FINISHED" or project is None or run is None:
        tracking.end(status)
        return
    artifacts: list[tuple[Path, str | None]] = [(project.config_path, "config"),
                                                (project.inside(run.dir) / "logs" / "metrics.json", "logs")]
    report = run.summary.get("report")
    if report and (project.root / report).is_file():
        text = (project.root / report).read_text(encoding="utf-8")
        artifacts.append((project.root / report, "reports"))
        artifacts += [(project.reports_dir / figure, "reports/figures") for figure in sorted(set(FIGURE.findall(text)))]
    tags = {"wf.status": run.status, "wf.passed": str(bool(run.passed)).lower()}
    registered = getattr(facts, "registered", None)
    tracking.end("FINISHED", tags, artifacts, metrics=phase_figures(facts),
                 model_id=getattr(registered, "model_id", None))


def phase_figures(facts: Any) -> dict[str, float]:
    """The figures a phase's report leads with, as metrics of its MLflow run (the training figures
    are logged by the trainer): a sweep's best trial and its seed comparison, the test figures of
    the final models (mean and spread over the seeds, linked to the registered model)."""
    figures: dict[str, float | None] = {}
    best, comparison = getattr(facts, "best", None), getattr(facts, "comparison", None)
    if getattr(facts, "study", None) is not None:  # an optimization
        figures["sweep/trials"] = float(len(facts.trials))
        if best is not None:
            figures |= {f"sweep/best_{facts.metric}": best.value, "sweep/best_trial": float(best.trial)}
        if comparison is not None:
            figures |= {f"comparison/{key}": getattr(comparison, key) for key in
                        ("baseline_mean", "baseline_std", "optimized_mean", "optimized_std", "improvement",
                         "p_value")}
            figures["comparison/significant"] = float(comparison.significant)
    for key, spread in (getattr(facts, "summary", None) or {}).items():  # a finalization's test figures
        figures |= {f"test/{key}": spread.mean, f"test/{key}_std": spread.std}
    return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float))}
