"""The settings a gate does not vouch for (fingerprints.NO_COMPUTATION) change no computation: the
same run with each of them changed ends with bit-equal weights, so turning a tracker on after a gate
passed may leave the gate passing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.config.schema import with_changes  # noqa: E402
from mlflow_core.training.checkpoint import weights_sha256  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402
from mlflow_core.workflow.fingerprints import NO_COMPUTATION  # noqa: E402

CHANGED = {"monitoring.tensorboard": True, "monitoring.wandb": True, "monitoring.wandb_project": "elsewhere",
           "monitoring.mlflow": True, "monitoring.mlflow_uri": "http://127.0.0.1:1", "monitoring.mlflow_log_checkpoints": True,
           "monitoring.mlflow_system_metrics": True,
           "monitoring.gpu_sample_interval_s": 0.05, "checkpointing.replay_every_n_epochs": 0}


def test_every_setting_that_counts_for_nothing_is_tried():
    assert set(CHANGED) == set(NO_COMPUTATION)


def test_each_setting_that_changes_no_computation_leaves_the_weights_bit_equal(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    base = load_config_text("training: {device: cpu, epochs: 2}\nmodel: {channels: [8, 16]}\n"
                            "early_stopping: {enabled: false}\n", "t")

    def trained(cfg, name: str) -> str:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        trainer = Trainer(cfg, tmp_path, run, run_id=name)
        trainer.fit()
        return weights_sha256(trainer.model.state_dict())

    reference = trained(base, "reference")
    for key, value in CHANGED.items():
        if key == "monitoring.wandb":
            pytest.importorskip("wandb")
        assert trained(with_changes(base, {key: value}), key.replace(".", "_")) == reference, key
