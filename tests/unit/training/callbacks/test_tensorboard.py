"""TensorBoard events (`monitoring.tensorboard`): what a run writes, read back with TensorBoard's own
reader, and a resumed run showing each step once."""

from __future__ import annotations

import csv
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402

CONFIG = ("training: {device: cpu, epochs: 2}\nmodel: {channels: [8]}\nearly_stopping: {enabled: false}\n"
          "monitoring: {tensorboard: true}\n")


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def _scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_run_writes_steps_epochs_and_hyperparameters(tmp_path):
    cfg = load_config_text(CONFIG, "t")
    result = Trainer(cfg, tmp_path, tmp_path / "run").fit()
    events = _events(tmp_path / "run")
    with (tmp_path / "run" / "logs" / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = _scalars(events, "train/loss")
    assert [s for s, _ in losses] == [int(r["step"]) for r in rows]  # every step, once
    assert all(abs(v - float(r["loss"])) <= 1e-6 * max(1.0, abs(v)) for (_, v), r in zip(losses, rows))
    epochs = _scalars(events, "epoch/val_accuracy")
    steps = result.metrics["steps"]
    assert [s for s, _ in epochs] == [steps // 2 - 1, steps - 1]  # each epoch at its last step
    assert epochs[-1][1] == pytest.approx(result.metrics["epochs"][-1]["val_accuracy"], abs=1e-6)
    assert "train/grad_norm" in events.Tags()["scalars"] and "epoch/train_loss" in events.Tags()["scalars"]
    assert "result/best_val_loss" in events.Tags()["scalars"]  # the HParams dashboard's metric
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_a_resumed_run_shows_each_step_once_with_the_uninterrupted_values(tmp_path):
    """A crash at step 30 after the periodic resume point of step 20 (as a kill -9 would leave it): the
    resumed run trains steps 20–30 again, and the events the crashed process wrote for them are purged."""
    cfg = load_config_text(CONFIG + "checkpointing: {resume_every_n_steps: 20}\n", "t")
    whole = Trainer(cfg, tmp_path, tmp_path / "whole").fit()

    def crash_at(p):
        if p.stage == "train" and p.global_step == 30:
            raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError, match="dies here"):
        Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=crash_at).fit()
    crashed = _scalars(_events(tmp_path / "cut"), "train/loss")
    assert crashed[-1][0] == 29  # steps 20–29 were written after the resume point
    resume = torch.load(tmp_path / "cut" / "checkpoints" / "resume.pt", weights_only=True)
    assert resume["global_step"] == 20
    Trainer(cfg, tmp_path, tmp_path / "cut", resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt").fit()
    resumed, reference = _events(tmp_path / "cut"), _events(tmp_path / "whole")
    assert _scalars(resumed, "train/loss") == _scalars(reference, "train/loss")
    assert _scalars(resumed, "epoch/val_loss") == _scalars(reference, "epoch/val_loss")
    assert len(_scalars(resumed, "train/loss")) == whole.metrics["steps"]


def test_without_the_tensorboard_package_the_run_says_how_to_install_it(tmp_path, monkeypatch):
    from mlflow_core.errors import UserInputError

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what Python does for a package not installed
    cfg = load_config_text(CONFIG, "t")
    with pytest.raises(UserInputError, match=r"pip install 'wf-phases\[tensorboard\]'"):
        Trainer(cfg, tmp_path, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "tensorboard").exists()
