"""Weights & Biases (`monitoring.wandb`), offline: what a run logs, found in the run's W&B log (its
protobuf records, read with tests/helpers.wandb_records: this wandb has no Python reader for them)."""

import json

import pytest

pytest.importorskip("wandb")


def _cfg(more=""):
    from mlflow_core.config import load_config_text

    return load_config_text("project: {name: wbtest}\ntraining: {device: cpu, epochs: 2}\n"
                            "model: {channels: [8, 16]}\nearly_stopping: {enabled: false}\n"
                            f"monitoring: {{wandb: true, check_every_n_steps: 5}}\n{more}", "t")


def test_an_offline_run_logs_config_steps_epochs_and_results(tmp_path, monkeypatch, caplog):
    import logging

    from mlflow_core.training.trainer import Trainer
    from tests.helpers import wandb_file_bytes

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is wf's default, without a key or network
    monkeypatch.setenv("WANDB_API_KEY", "")
    with caplog.at_level(logging.INFO):
        result = Trainer(_cfg(), tmp_path, tmp_path / "run", run_id="baseline-1").fit()
    assert result.status == "completed"
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*-baseline-1/run-baseline-1.wandb")
    data = wandb_file_bytes(record)  # the run's file once W&B's service has written all of it
    best = result.metrics["best"]
    for key in (b"learning_rate", b"train/loss", b"train/grad_norm", b"train/lr", b"epoch/val_accuracy",
                f"best_{best['metric']}".encode()):
        assert key in data, key
    assert json.dumps(best["value"]).encode() in data  # the result, as logged
    assert b"gpu/utilization_percent" not in data  # no GPU here: nothing invented
    sync = [r.getMessage() for r in caplog.records if "upload with: wandb sync " in r.getMessage()]
    assert sync and str(tmp_path / "run" / "wandb" / "offline-run-") in sync[0]


def test_wandb_that_cannot_start_never_stops_the_run(tmp_path, monkeypatch, caplog):
    import logging

    from mlflow_core.training.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "online")  # no key, no network: W&B refuses to start
    monkeypatch.setenv("WANDB_API_KEY", "")
    with caplog.at_level(logging.WARNING):
        result = Trainer(_cfg(), tmp_path, tmp_path / "run", run_id="baseline-2").fit()
    assert result.status == "completed"
    assert any("Weights & Biases is not logging this run" in r.getMessage() for r in caplog.records)


def test_wandb_asked_for_but_not_installed_is_bad_input(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['wandb'] = None\nimport importlib.util\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'wandb' else __import__('importlib.machinery')\n"
            "from mlflow_core.training.tracking import require_wandb\nfrom mlflow_core.errors import UserInputError\n"
            "try:\n    require_wandb()\nexcept UserInputError as e:\n    print(e.message, e.hint)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "monitoring.wandb is on and the wandb package is not installed" in out.stdout
    assert "pip install 'wf-phases[wandb]'" in out.stdout


def test_a_run_cut_short_and_resumed_continues_its_wandb_run_with_each_step_once(tmp_path, monkeypatch, caplog):
    """A crash at step 30 after the resume point of step 20: the resumed process trains steps 20–29
    again, and logs from step 30 on into the same W&B run (its own offline folder); the sync command
    names both folders. The run is tagged, grouped and typed by its phase, at the project's commit."""
    import logging
    import subprocess

    import torch

    from mlflow_core.training.trainer import Trainer
    from tests.helpers import wandb_history_steps, wandb_records

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    cfg = _cfg("checkpointing: {resume_every_n_steps: 20}\n")

    def crash_at(p):
        if p.stage == "train" and p.global_step == 30:
            raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError, match="dies here"):
        Trainer(cfg, tmp_path, tmp_path / "run", run_id="baseline-3", phase="baseline", on_progress=crash_at).fit()
    resume = tmp_path / "run" / "checkpoints" / "resume.pt"
    assert torch.load(resume, weights_only=True)["global_step"] == 20
    with caplog.at_level(logging.INFO):
        result = Trainer(cfg, tmp_path, tmp_path / "run", run_id="baseline-3", phase="baseline",
                         resume_from=resume).fit()
    assert result.status == "completed"
    files = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-baseline-3.wandb"))
    assert len(files) == 2  # one folder per process, the same W&B run id
    first, second = (wandb_history_steps(f) for f in files)
    assert max(first) == 29 and min(second) == 30  # steps 20–29 were logged once, by the first process
    assert sorted(first + second) == list(range(result.metrics["steps"]))  # every step, once
    run = next(r.run for r in wandb_records(files[1]) if r.WhichOneof("record_type") == "run")
    assert run.run_id == "baseline-3" and run.run_group == "wbtest" and run.job_type == "baseline"
    assert list(run.tags) == ["baseline", "training"] and run.git.commit == commit
    sync = [r.getMessage() for r in caplog.records if "wandb sync " in r.getMessage()][-1]  # the resumed process's
    assert all(str(f.parent) in sync for f in files)
