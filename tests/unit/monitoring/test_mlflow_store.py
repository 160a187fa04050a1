"""Tracking never costs a run: after the store's first failure every call is a no-op, whatever it is."""

from __future__ import annotations

import shutil

import pytest

from mlflow_core.monitoring.mlflow_store import Store


def test_after_a_failure_every_store_call_is_a_no_op(tmp_path, mlflow_store_template):
    pytest.importorskip("mlflow")
    shutil.copy(mlflow_store_template, tmp_path / "mlflow.db")
    said: list[str] = []
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}", "p", tmp_path / "mlartifacts", notify=said.append)
    run_id = store.create_run("baseline-1", {"wf.phase": "baseline"})
    assert store.ok and run_id
    store.log_metrics("no-such-run", [("train/loss", 1.0, 0)], wait=True)  # a real failure of the store
    assert not store.ok and len(said) == 1 and "MLflow tracking stopped" in said[0]
    (tmp_path / "report.md").write_text("r")
    # each of these reached for the closed client before it was guarded (an AttributeError ended the run)
    assert store.reopen(run_id) is False
    store.set_tags(run_id, {"wf.status": "completed"})
    store.log_params(run_id, {"training.epochs": "2"})
    store.log_metrics(run_id, [("train/loss", 0.5, 1)])
    assert store.last_step(run_id, "train/loss") is None
    store.log_artifact(run_id, tmp_path / "report.md", "reports")
    store.finish(run_id, "FINISHED")
    assert store.create_run("baseline-2", {}) is None and len(said) == 1  # said once, never again
