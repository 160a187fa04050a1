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
              data: dict[str, Any] | None = None) -> PhaseRun | None:
        """The phase's run: `existing` (a resume) reopened, else a new one. None when tracking is
        off or the store cannot be reached (said once; the phase goes on)."""
        monitoring = cfg.monitoring
        if not monitoring.mlflow:
            return None
        store = open_store(project_root, monitoring.mlflow_uri, cfg.project.name, notify)
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
        return cls(store, run_id, phase, run_dir, monitoring.mlflow_log_checkpoints)

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
            artifacts: list[tuple[Path, str | None]] | None = None) -> None:
        """The phase's outcome: its files as artifacts, its tags (the gate's verdict), its status."""
        if self.run_id is None:
            self.store.flush()
            return
        for path, where in artifacts or []:
            self.store.log_artifact(self.run_id, path, where)
        if tags:
            self.store.set_tags(self.run_id, tags)
        self.store.finish(self.run_id, status)


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
