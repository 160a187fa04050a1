"""Interrupted runs: a signal stops training after the current step with a resume checkpoint, and
`--resume` continues it to the very weights an uninterrupted run reaches (CPU, deterministic)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("stop_at", [20, 45])  # mid-epoch, and the last step of epoch 1 (45 steps each)
def test_resume_after_a_signal_is_bit_identical(tmp_path, stop_at):
    from mlflow_core.config import load_config_text
    from mlflow_core.training.trainer import Trainer

    cfg = load_config_text("training: {device: cpu, epochs: 3}\nmodel: {channels: [8, 16], dropout: 0.3}\n"
                           "early_stopping: {enabled: false}\n", "t")
    full = Trainer(cfg, tmp_path, tmp_path / "full").fit()

    def signal_at(p):
        if p.stage == "train" and p.global_step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=signal_at, stop_on_signals=True).fit()
    assert cut.status == "interrupted" and cut.metrics["steps"] == stop_at
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", stop_on_signals=True,
                      resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt").fit()
    assert resumed.status == "completed" and resumed.metrics["steps"] == full.metrics["steps"]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["val_loss"] for e in resumed.metrics["epochs"]] == [e["val_loss"] for e in full.metrics["epochs"]]
    rows = (tmp_path / "cut" / "logs" / "steps.csv").read_text().splitlines()
    assert len(rows) - 1 == full.metrics["steps"]  # one row per step, none twice


def test_resume_refuses_a_changed_config(tmp_path):
    from mlflow_core.config import load_config_text
    from mlflow_core.errors import UserInputError
    from mlflow_core.training.trainer import Trainer

    cfg = load_config_text("training: {device: cpu, epochs: 1}\nmodel: {channels: [8]}\n", "t")
    Trainer(cfg, tmp_path, tmp_path / "r", stop_on_signals=True,
            on_progress=lambda p: os.kill(os.getpid(), signal.SIGINT) if p.global_step == 10 else None).fit()
    other = load_config_text("training: {device: cpu, epochs: 1, learning_rate: 0.01}\nmodel: {channels: [8]}\n", "t")
    with pytest.raises(UserInputError, match="different config"):
        Trainer(other, tmp_path, tmp_path / "r", resume_from=tmp_path / "r" / "checkpoints" / "resume.pt").fit()


def test_sigterm_to_wf_phase_then_resume(trained_project, tmp_path):
    """A real `wf phase baseline` process gets SIGTERM mid-run: exit 143, the run is recorded as
    interrupted; `--resume` finishes it with the weights of the session's uninterrupted baseline."""
    import shutil

    project = tmp_path / "q"
    shutil.copytree(trained_project, project)
    state = json.loads((project / ".wf" / "state.json").read_text())
    reference = next(r for r in state["runs"] if r["phase"] == "baseline")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_core", "phase", "baseline"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = sorted((project / "runs").glob("baseline-*/logs/steps.csv"))
        fresh = [p for p in logs if reference["run_id"] not in str(p)]
        if fresh and len(fresh[0].read_text().splitlines()) > 60:  # well into epoch 2
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:] + err
    assert "wf phase baseline --resume" in err
    state = json.loads((project / ".wf" / "state.json").read_text())
    run = state["runs"][-1]
    # steps.csv is flushed ten steps at a time: the signal can land on the very step the 60th row was written
    assert run["status"] == "interrupted" and run["summary"]["resume"]["step"] >= 60
    r = subprocess.run([sys.executable, "-m", "mlflow_core", "phase", "baseline", "--resume"], cwd=project,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    state = json.loads((project / ".wf" / "state.json").read_text())
    assert state["runs"][-1]["run_id"] == run["run_id"] and state["runs"][-1]["status"] in ("completed", "early_stopped")
    assert "phase_resumed" in [e["event"] for e in state["history"]]
    load = lambda run_dir: torch.load(project / run_dir / "checkpoints" / "last_model.pt", weights_only=True)["model"]  # noqa: E731
    a, b = load(reference["dir"]), load(run["dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_deadline_stops_like_a_signal_and_the_resume_is_bit_identical(tmp_path):
    import time

    from mlflow_core.config import load_config_text
    from mlflow_core.training.trainer import TIME_LIMIT, Trainer

    cfg = load_config_text("training: {device: cpu, epochs: 2}\nmodel: {channels: [8]}\n"
                           "early_stopping: {enabled: false}\n", "t")
    full = Trainer(cfg, tmp_path, tmp_path / "full").fit()
    cut_trainer = Trainer(cfg, tmp_path, tmp_path / "cut", deadline=time.monotonic())  # already past
    cut = cut_trainer.fit()
    assert cut.status == "interrupted" and cut.metrics["steps"] == 1 and cut_trainer.signal_received == TIME_LIMIT
    assert cut.metrics["stop_reason"].startswith("the time limit after step 1")
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt",
                      deadline=time.monotonic() + 3600).fit()
    assert resumed.status == "completed"
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_limit_stops_the_phase_resumably_with_exit_124(wf, project_copy):
    r = wf("phase", "baseline", "--time-limit", "61s", cwd=project_copy)  # 1 s of it left for training
    assert r.code == 124, r.out[-2000:] + r.err
    assert "baseline stopped at its time limit" in r.err and "wf phase baseline --resume" in r.err
    state = json.loads((project_copy / ".wf" / "state.json").read_text())
    run = state["runs"][-1]
    assert run["status"] == "interrupted" and run["summary"]["resume"]["step"] >= 1
    assert wf("phase", "baseline", "--time-limit", "1h", "--smoke", cwd=project_copy).code == 2
    bad = wf("phase", "baseline", "--resume", "--time-limit", "soon", cwd=project_copy)
    assert bad.code == 2 and "--time-limit 'soon': not a duration" in bad.err


def test_resume_without_an_interrupted_run_says_what_to_run(wf, project_copy):
    r = wf("phase", "baseline", "--resume", cwd=project_copy)
    assert r.code == 2 and "no interrupted baseline run to resume" in r.err and "wf phase baseline" in r.err


def test_a_run_the_project_went_on_without_is_not_resumed(wf, project_copy):
    """An interrupted run older than a later phase's finished run: resuming it would take the project
    back with a stale run; the refusal says so and how to start anew."""
    import json

    path = project_copy / ".wf" / "state.json"
    state = json.loads(path.read_text())
    baseline = next(r for r in state["runs"] if r["phase"] == "baseline")
    state["runs"].append({**baseline, "run_id": "baseline-19990101-000000-abcd", "status": "interrupted",
                          "started_at": "1999-01-01T00:00:00+00:00", "passed": False})
    path.write_text(json.dumps(state))
    r = wf("phase", "baseline", "--resume", cwd=project_copy)
    said = " ".join(r.err.split())
    assert r.code == 2 and "stopped before the project went on to setup, baseline" not in said
    assert "run baseline-19990101-000000-abcd of baseline stopped before the project went on to setup" in said
    assert "Start a new run with `wf phase baseline`" in said and "Traceback" not in r.err


def test_kill_9_then_resume_from_the_latest_periodic_checkpoint(trained_project, tmp_path):
    """kill -9 gives no chance to save: the periodic resume.pt (atomic) is what is left, and the run
    record still says running. `--resume` takes the lock, sees the run's process is gone, and finishes
    the run with the weights of the uninterrupted baseline."""
    import shutil

    from mlflow_core.workflow.scaffold import set_yaml_value

    project = tmp_path / "q"
    shutil.copytree(trained_project, project)
    config = project / "training_config.yaml"
    config.write_text(set_yaml_value(config.read_text(), "checkpointing.resume_every_n_steps", "20"))
    setup = subprocess.run([sys.executable, "-m", "mlflow_core", "phase", "setup"], cwd=project,
                           capture_output=True, text=True, timeout=300)  # the config changed: verify it again
    assert setup.returncode == 0, setup.stdout[-2000:]
    reference = next(r for r in json.loads((project / ".wf" / "state.json").read_text())["runs"]
                     if r["phase"] == "baseline")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_core", "phase", "baseline"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        fresh = [p for p in (project / "runs").glob("baseline-*/logs/steps.csv") if reference["run_id"] not in str(p)]
        if fresh and len(fresh[0].read_text().splitlines()) > 70:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    run = json.loads((project / ".wf" / "state.json").read_text())["runs"][-1]
    assert run["status"] == "running"
    resume = torch.load(project / run["dir"] / "checkpoints" / "resume.pt", weights_only=True)
    assert resume["global_step"] >= 40
    r = subprocess.run([sys.executable, "-m", "mlflow_core", "phase", "baseline", "--resume"], cwd=project,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    load = lambda run_dir: torch.load(project / run_dir / "checkpoints" / "last_model.pt", weights_only=True)["model"]  # noqa: E731
    a, b = load(reference["dir"]), load(run["dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)
