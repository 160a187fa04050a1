"""MLflow tracking of a training run (`monitoring.mlflow: true`): the step figures of every
monitoring window and the epoch's figures at its last step, sent in batches without waiting for the
store (MLflow's background queue), wf's own GPU figures, the results at the end;
the run's best checkpoint as an artifact only when asked (`monitoring.mlflow_log_checkpoints`).

A resumed run logs only the steps its MLflow history lacks: MLflow's history is append-only, and
the steps between the resume point and the interruption, trained again exactly, are there already.
A nested run (a trial, a comparison run, a final seed) is ended here, FINISHED, KILLED on a signal
or FAILED on a crash; the phase's own run is ended by the phase, with its report."""

from __future__ import annotations

import time
from typing import Any

from mlflow_core.monitoring.mlflow_runs import MLFLOW_STATUS
from mlflow_core.monitoring.mlflow_store import METRICS_PER_CALL, flatten
from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.callbacks.replay import REPLAY_DIR
from mlflow_core.training.callbacks.tensorboard import tracked_results

SEND_EVERY_S = 10.0  # figures go to the store in one batch at most this often (and at the end)
STEP_FAMILY, EPOCH_FAMILY = "train/loss", "epoch/epoch"  # the keys whose history says what is logged


class MlflowTracking(Callback):
    """Rows wait in a buffer and go to the store together: a commit to MLflow's SQLite store costs
    tens of milliseconds of Python, on a small model as long as many steps. The buffer is part of
    resume.pt (state_dict), so that what a killed process had not sent yet comes back with the resume
    point; rows the store already holds (sent after that point) are not sent twice."""

    state_key, resume_only = "mlflow", True

    def __init__(self, link: Any):
        self.link, self.store = link, link.store
        self.run_id: str | None = None
        self.owned = False
        self.buffer: list[tuple[str, float, int]] = []
        self.sent_at = 0.0
        self.logged: dict[str, int] = {STEP_FAMILY: -1, EPOCH_FAMILY: -1}  # the run's history, per family

    @classmethod
    def configured(cls, t: Any) -> MlflowTracking | None:
        return cls(t.mlflow) if getattr(t, "mlflow", None) is not None and t.run_dir else None

    def state_dict(self) -> Any:
        return {"buffer": [list(row) for row in self.buffer]}

    def load_state_dict(self, state: Any) -> None:
        self.buffer = [(str(k), float(v), int(step)) for k, v, step in (state or {}).get("buffer", [])]

    def on_fit_start(self, t, s) -> None:
        self.sent_at = time.monotonic()
        self.run_id, self.owned = self.link.open(t.run_dir, t.run_id or t.run_dir.name,
                                                 {"wf.model": t.cfg.model.label, "wf.seed": t.cfg.reproducibility.seed})
        if not self.run_id:
            return
        if self.owned:
            self.store.log_params(self.run_id, flatten(t.cfg.model_dump(mode="json")))
        if s.resume:
            for family in self.logged:
                last = self.store.last_step(self.run_id, family)
                self.logged[family] = -1 if last is None else last
            self.buffer = [row for row in self.buffer if self._new(row[0], row[2])]
            self.store.set_tags(self.run_id, {"wf.resumed_from_step": s.global_step})

    def _new(self, key: str, step: int) -> bool:
        return step > self.logged[EPOCH_FAMILY if key.startswith("epoch/") else STEP_FAMILY]

    def on_window_end(self, t, s, window) -> None:
        if not self.run_id:
            return
        rows = [row for step, loss, norm in zip(window.steps, window.losses, window.grad_norms)
                if self._new(STEP_FAMILY, step) for row in (("train/loss", loss, step), ("train/grad_norm", norm, step))]
        if rows:
            last = window.steps[-1]
            rows.append(("train/lr", window.lr, last))
            gpu = t.gpu_sampler.latest() if t.gpu_sampler else None
            if gpu is not None:
                rows += [("gpu/utilization_percent", gpu["utilization"], last),
                         ("gpu/memory_used_mib", gpu["memory_used_mib"], last)]
            self._add(rows)

    def on_epoch_end(self, t, s, record) -> None:
        step = s.global_step - 1
        if not self.run_id or not self._new(EPOCH_FAMILY, step):
            return
        rows = [(f"epoch/{key}", value, step) for key, value in record.items()
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self._add([*rows, (EPOCH_FAMILY, record["epoch"], step)])

    def _add(self, rows: list[tuple[str, float, int]]) -> None:
        self.buffer += rows
        if len(self.buffer) >= METRICS_PER_CALL or time.monotonic() - self.sent_at >= SEND_EVERY_S:
            self._send()

    def _send(self, *, wait: bool = False) -> None:
        if self.buffer:
            self.store.log_metrics(self.run_id, self.buffer, wait=wait)
            self.buffer = []
        self.sent_at = time.monotonic()

    def on_fit_end(self, t, s) -> None:
        if not self.run_id:
            return
        self.buffer += [(k, v, max(s.global_step - 1, 0)) for k, v in tracked_results(s.metrics).items()]
        self._send()
        best = ((s.metrics.get("checkpoints") or {}).get("best") or {}).get("path")
        if self.link.log_checkpoints and best:
            # what `wf verify --from mlflow` recomputes the run's claims from: the best checkpoint, the
            # kept training states, and the run's record (written by the callback before this one)
            self.store.log_artifact(self.run_id, t.run_dir / best, "checkpoints")
            for state in sorted((t.run_dir / REPLAY_DIR).glob("epoch_*.pt")):
                self.store.log_artifact(self.run_id, state, REPLAY_DIR)
        status = s.metrics.get("status") or "crashed"
        self.store.set_tags(self.run_id, {"wf.status": status})
        if self.owned:
            self.store.finish(self.run_id, MLFLOW_STATUS.get(status, "FINISHED"))
        else:
            self.store.flush()
