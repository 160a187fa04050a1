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


def test_nested_runs_carry_the_projects_commit_not_the_one_mlflow_finds(tmp_path, mlflow_store_template):
    """MLflow's own git context names the checkout the running program comes from (wf's): a phase's
    nested runs (trials, seeds) carry the project's commit, as the phase's run does."""
    pytest.importorskip("mlflow")
    from mlflow_core.config import load_config_text
    from mlflow_core.monitoring.mlflow_runs import PhaseRun

    shutil.copy(mlflow_store_template, tmp_path / "mlflow.db")
    cfg = load_config_text("project: {name: p}\nmonitoring: {mlflow: true}\n", "t")
    commit = "0123456789abcdef0123456789abcdef01234567"
    phase = PhaseRun.start(tmp_path, cfg, "optimization", "optimization-1", tmp_path / "runs" / "optimization-1",
                           {"mlflow.source.git.commit": commit})
    trial_dir = tmp_path / "runs" / "optimization-1" / "trials" / "trial_000"
    nested, owned = phase.link().open(trial_dir, "optimization-1/trial_000", {})
    assert owned and nested != phase.run_id
    client = phase.store.client
    for run_id in (phase.run_id, nested):
        assert client.get_run(run_id).data.tags["mlflow.source.git.commit"] == commit
    assert client.get_run(nested).data.tags["wf.kind"] == "trial"
