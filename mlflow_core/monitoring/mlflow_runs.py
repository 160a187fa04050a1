"""The MLflow runs of a wf phase: the phase's own run, and its training runs.

A phase run (baseline, diagnostics, an optimization study, a finalization) is one MLflow run, named
by the wf run id, created when the phase starts, continued by `--resume` (its id is in the run
record), and ended with the phase's outcome: FINISHED, FAILED on a crash or bad input, KILLED on a
signal. The baseline trains in it. Every other training run (a trial, a comparison run, a final
seed or fold) is a run nested under it, opened and ended by its trainer; its id is kept in the
training run's folder, so that a resumed trial continues its own MLflow run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_core.monitoring.mlflow_store import Store, open_store, ui_command
from mlflow_core.workflow.runs import run_kind

MLFLOW_STATUS = {"interrupted": "KILLED", "crashed": "FAILED"}  # a wf run's end → its MLflow run's (else FINISHED)
RUN_FILE = "logs/mlflow_run.json"  # in a training run's folder: its nested MLflow run


@dataclass
class TrainingLink:
    """Where one training run's figures go: the phase's run itself (`own_run`: the phase's one
    training, the baseline's) or a run nested under it, which the trainer opens and ends."""
    store: Store
    phase: str
    phase_run: str | None  # None: a sweep worker's trial, nested once the study is gathered
    phase_run_dir: Path | None
    log_checkpoints: bool = False
    tags: dict[str, str] | None = None  # on every nested run (the study a trial belongs to)

    def open(self, run_dir: Path, name: str, tags: dict[str, str]) -> tuple[str | None, bool]:
        """(the MLflow run id, whether the trainer owns it)."""
        if self.phase_run_dir is not None and run_dir.resolve() == self.phase_run_dir.resolve():
            return self.phase_run, False
        recorded = run_dir / RUN_FILE
        if recorded.is_file():  # a resumed trial or seed: its own run again
            run_id = json.loads(recorded.read_text(encoding="utf-8")).get("run_id")
            if run_id and self.store.reopen(run_id):
                return run_id, True
        kind = run_kind(run_dir, self.phase)
        run_id = self.store.create_run(name, {"wf.phase": self.phase, "wf.kind": kind, "wf.run_id": name,
                                              **(self.tags or {}), **tags}, parent=self.phase_run)
        if run_id:
            from mlflow_core.atomic import atomic_write_json

            atomic_write_json(recorded, {"run_id": run_id, "tracking_uri": self.store.uri})
        return run_id, True


class PhaseRun:
    """The MLflow run of one wf phase run."""

    def __init__(self, store: Store, run_id: str | None, phase: str, run_dir: Path | None, log_checkpoints: bool):
        self.store, self.run_id, self.phase, self.run_dir = store, run_id, phase, run_dir
        self.log_checkpoints = log_checkpoints
        self.system_metrics: Any = None  # MLflow's SystemMetricsMonitor, when asked for
        self.training_tags: dict[str, str] = {}  # given to every nested run (the runner sets the study)

    @classmethod
    def for_sweep_worker(cls, project_root: Path, cfg: Any, notify: Any = None) -> PhaseRun | None:
        """A sweep worker records no phase run: its trials are runs of their own, tagged with their
        study, until `wf phase optimization` nests them under its run. The worker opens (and
        migrates) the store before its first trial."""
        if not cfg.monitoring.mlflow:
            return None
        store = open_store(project_root, cfg.monitoring.mlflow_uri, cfg.project.name, notify)
        return cls(store, None, "optimization", None, cfg.monitoring.mlflow_log_checkpoints) if store.ok else None

    @classmethod
    def start(cls, project_root: Path, cfg: Any, phase: str, wf_run_id: str, run_dir: Path,
              tags: dict[str, Any], existing: str | None = None, notify: Any = None,
              data: dict[str, Any] | None = None, ended: dict[str, str] | None = None) -> PhaseRun | None:
        """The phase's run: `existing` (a resume) reopened, else a new one. None when tracking is
        off or the store cannot be reached (said once; the phase goes on). `ended`: the MLflow runs
        of wf runs that have ended, with the status each should have (see end_left_running)."""
        monitoring = cfg.monitoring
        if not monitoring.mlflow:
            return None
        store = open_store(project_root, monitoring.mlflow_uri, cfg.project.name, notify)
        if ended:
            end_left_running(store, {k: v for k, v in ended.items() if k != existing})
        if existing and store.reopen(existing):
            store.set_tags(existing, {"wf.resumed": "true"})
            run_id: str | None = existing
        else:
            run_id = store.create_run(wf_run_id, {"wf.phase": phase, "wf.run_id": wf_run_id, **tags})
        if not run_id:
            return None
        from mlflow_core.monitoring.mlflow_store import flatten

        store.log_params(run_id, flatten(cfg.model_dump(mode="json")))
        if data and data.get("sha256") and not existing:
            splits = data.get("splits") or {}
            store.log_dataset(run_id, name=f"{cfg.project.name}: {data.get('source')} data",
                              digest=data["sha256"], source=str(data.get("root") or data.get("source")),
                              profile={"source": data.get("source"), **{k: v.get("files") for k, v in splits.items()
                                                                         if isinstance(v, dict)}})
        tracking = cls(store, run_id, phase, run_dir, monitoring.mlflow_log_checkpoints)
        # the project's commit on the nested runs too (MLflow's own context would name wf's checkout)
        tracking.training_tags.update({k: str(v) for k, v in tags.items() if k.startswith("mlflow.source.git")})
        if system_metrics_asked(monitoring):
            tracking.system_metrics = store.call("start the system metrics", _system_metrics, run_id, store.uri,
                                                 existing is not None)
        return tracking

    def link(self) -> TrainingLink:
        return TrainingLink(self.store, self.phase, self.run_id, self.run_dir, self.log_checkpoints,
                            dict(self.training_tags))

    def gather_study(self, study: str) -> int:
        """Trials that sweep workers ran for `study`, nested under this run."""
        return adopt_study_trials(self.store, study, self.run_id) if self.run_id and self.store.ok else 0

    @property
    def ui(self) -> str:
        return ui_command(self.store.uri)

    def end(self, status: str, tags: dict[str, Any] | None = None,
            artifacts: list[tuple[Path, str | None]] | None = None, metrics: dict[str, float] | None = None,
            model_id: str | None = None) -> None:
        """The phase's outcome: its files as artifacts, its figures as metrics (linked to the model
        it registered, `model_id`), its tags, its status."""
        if self.system_metrics is not None:
            self.store.call("stop the system metrics", self.system_metrics.finish)
            self.system_metrics = None
        if self.run_id is None:
            self.store.flush()
            return
        for path, where in artifacts or []:
            self.store.log_artifact(self.run_id, path, where)
        if metrics:
            self.store.log_metrics(self.run_id, [(k, v, 0) for k, v in metrics.items()], wait=True, model_id=model_id)
        if tags:
            self.store.set_tags(self.run_id, tags)
        self.store.finish(self.run_id, status)


SYSTEM_METRICS_VARIABLE = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


def system_metrics_asked(monitoring: Any) -> bool:
    """`monitoring.mlflow_system_metrics`, or MLflow's own variable set true (as its fluent API reads it)."""
    import os

    return bool(monitoring.mlflow_system_metrics) or os.environ.get(SYSTEM_METRICS_VARIABLE, "").strip().lower() in (
        "true", "1")


def require_system_metrics() -> None:
    import importlib.util

    from mlflow_core.errors import UserInputError

    if importlib.util.find_spec("psutil") is None:
        raise UserInputError(f"MLflow's system metrics are asked for (monitoring.mlflow_system_metrics or "
                             f"{SYSTEM_METRICS_VARIABLE}) and psutil, which reads them, is not installed.",
                             hint="Install it with `pip install 'wf-phases[mlflow]'`, or turn the system metrics off.")


def _system_metrics(run_id: str, uri: str, resumed: bool) -> Any:
    """MLflow's own monitor, sampling in its thread and logging system/* to the phase's run."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def end_left_running(store: Store, ended: dict[str, str]) -> int:
    """MLflow runs still RUNNING whose wf run has ended (`ended`: MLflow run id → FINISHED, FAILED or
    KILLED): the store was unreachable when the run ended, or the process was killed, and tracking
    had stopped. Ended now as their wf run did, and tagged so; how many."""
    if not store.ok or not ended:
        return 0
    found = store.call("find runs left running", "search_runs", [store.experiment_id],
                       filter_string="attributes.status = 'RUNNING'", max_results=1000)
    repaired = 0
    for run in found or []:
        status = ended.get(run.info.run_id)
        if status:
            store.set_tags(run.info.run_id, {"wf.repaired": "ended by a later wf command: tracking had stopped "
                                                            "before the run's end was recorded"})
            store.finish(run.info.run_id, status)
            repaired += store.ok
    return repaired


def tag_training_run(store: Store, run_dir: Path, tags: dict[str, Any]) -> None:
    """Tags on the MLflow run a training run's folder records (nothing when it has none)."""
    recorded = run_dir / RUN_FILE
    if store.ok and recorded.is_file():
        run_id = json.loads(recorded.read_text(encoding="utf-8")).get("run_id")
        if run_id:
            store.set_tags(run_id, tags)


def adopt_study_trials(store: Store, study: str, parent: str) -> int:
    """Trial runs that sweep workers logged on their own (tagged with their study), nested under the
    phase's run once `wf phase optimization` gathers the study. Returns how many it nested."""
    found = store.call("find the study's trials", "search_runs", [store.experiment_id],
                       filter_string=f"tags.`wf.study` = '{study}' and tags.`wf.kind` = 'trial'", max_results=10000)
    adopted = 0
    for run in found or []:
        if run.data.tags.get("mlflow.parentRunId") != parent:
            store.set_tags(run.info.run_id, {"mlflow.parentRunId": parent})
            adopted += 1
    return adopted
