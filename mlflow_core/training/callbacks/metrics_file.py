"""`logs/metrics.json`: rewritten atomically after every epoch (status `running`) and once more when
the run ends, however it ends (its status, stop reason, anomalies, precision and GPU figures)."""

from __future__ import annotations

import time
from typing import Any

from mlflow_core.atomic import atomic_write_json
from mlflow_core.errors import StorageError
from mlflow_core.training.callbacks.base import Callback
from mlflow_core.workflow.records import validated_metrics


class MetricsFile(Callback):
    def on_epoch_end(self, t, s, record) -> None:
        s.metrics["steps"] = s.global_step
        self.write(t, s, "running")

    def on_fit_end(self, t, s) -> None:
        m = s.metrics
        m["steps"], m["stop_reason"], m["anomalies"] = s.global_step, s.stop_reason, t.anomalies
        scaler = t.step.scaler
        m["precision"] = {**t.precision.as_record(), "grad_scaler": scaler is not None,
                          "skipped_steps": t.monitor.skipped_steps,
                          "final_scale": scaler.get_scale() if scaler is not None else None}
        try:
            self.write(t, s, s.status)
        except StorageError as exc:
            if s.status != "interrupted":  # the first refusal is the one to report; this one is its echo
                raise
            t.log.error("metrics.json not updated: %s", exc.message)

    @staticmethod
    def write(t: Any, s: Any, status: str) -> None:
        s.metrics["status"] = status
        s.metrics["duration_s"] = round(time.perf_counter() - s.started, 3)
        if t.run_dir:
            # through the RunMetrics model: a key the schema does not declare fails here, not in a reader
            atomic_write_json(t.run_dir / "logs" / "metrics.json", validated_metrics(s.metrics))
