"""metrics.json is written and read through the RunMetrics model: what a real run writes validates
and round-trips; a key the schema does not declare fails at the write; a file edited by hand is one
clear error naming the file and the field (exit 2), not a KeyError in a report."""

from __future__ import annotations

import json

import pytest

from mlflow_core.workflow.records import RunMetrics, load_run_metrics, validated_metrics

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402

CONFIG = ("training: {device: cpu, epochs: 2, batch_size: 64, ema: {enabled: true, decay: 0.9}}\n"
          "model: {channels: [8, 16]}\nearly_stopping: {enabled: false}\ncheckpointing: {keep_best: 2}\n"
          "augmentation: {mixup_alpha: 0.2}\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    Trainer(load_config_text(CONFIG, "records.yaml"), root, root / "run", run_id="r").fit()
    return root / "run"


def test_a_real_runs_metrics_validate_and_round_trip(run_dir):
    path = run_dir / "logs" / "metrics.json"
    metrics = load_run_metrics(path)
    assert metrics.status == "completed" and len(metrics.epochs) == 2
    assert metrics.checkpoints.last.path == "checkpoints/last_model.pt" and len(metrics.checkpoints.top) == 2
    assert metrics.epochs[-1].model_extra["ema_val_accuracy"] == metrics.epochs[-1].val_accuracy
    assert metrics.to_json() == json.loads(path.read_text())


def test_an_undeclared_key_fails_at_the_write(run_dir):
    metrics = json.loads((run_dir / "logs" / "metrics.json").read_text())
    with pytest.raises(ValueError, match="gpu_utilisation"):
        validated_metrics({**metrics, "gpu_utilisation": 0.9})
    with pytest.raises(ValueError, match="steps"):
        RunMetrics.model_validate({**metrics, "steps": "many"})


def test_a_hand_edited_metrics_file_is_exit_2_naming_file_and_field(run_dir, tmp_path, wf):
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(tmp_path / "p").root
    metrics = json.loads((run_dir / "logs" / "metrics.json").read_text())
    metrics["epochs"][1]["train_accuracy"] = "high"
    target = project / "runs" / "r" / "logs" / "metrics.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(metrics))
    state_path = project / ".wf" / "state.json"
    state = json.loads(state_path.read_text())
    state["runs"].append({"run_id": "r", "phase": "baseline", "status": "completed", "started_at": "t",
                          "dir": "runs/r"})
    state_path.write_text(json.dumps(state))
    r = wf("diagnose", "overfitting", cwd=project)
    assert r.code == 2, r.out + r.err
    assert "runs/r/logs/metrics.json: field epochs.1.train_accuracy" in " ".join((r.out + r.err).split())
    assert "Traceback" not in r.out + r.err
