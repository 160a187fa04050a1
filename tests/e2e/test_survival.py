"""What a run survives besides a plain signal: SLURM's preemption warning (SIGUSR1, requeue), a disk
that refuses writes, and kill -9 aimed at the moment a checkpoint, a report or the state is being
replaced. Each is driven on a real `wf` process; the weights a resumed run ends with are compared
with the session's uninterrupted baseline."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

WF = [sys.executable, "-m", "mlflow_core"]


def _copy(trained_project: Path, tmp_path: Path) -> tuple[Path, dict]:
    project = tmp_path / "q"
    shutil.copytree(trained_project, project)
    reference = next(r for r in json.loads((project / ".wf" / "state.json").read_text())["runs"]
                     if r["phase"] == "baseline")
    return project, reference


def _wait_for_steps(project: Path, reference: dict, rows: int, proc: subprocess.Popen) -> None:
    """Until the new baseline run has logged `rows` steps (or the process ended)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fresh = [p for p in (project / "runs").glob("baseline-*/logs/steps.csv") if reference["run_id"] not in str(p)]
        if fresh and len(fresh[0].read_text().splitlines()) > rows:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {rows} (exit {proc.poll()})")


def _weights(project: Path, run_dir: str) -> dict:
    return torch.load(project / run_dir / "checkpoints" / "last_model.pt", weights_only=True)["model"]


def _same_weights(project: Path, reference: dict, run: dict) -> bool:
    a, b = _weights(project, reference["dir"]), _weights(project, run["dir"])
    return all(torch.equal(a[k], b[k]) for k in a)


def _resume(project: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([*WF, "phase", "baseline", "--resume"], cwd=project, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    return r


def _state(project: Path) -> dict:
    return json.loads((project / ".wf" / "state.json").read_text())


# --- SIGUSR1: SLURM's warning before preemption ------------------------------------------------------


def test_sigusr1_under_slurm_saves_requeues_the_job_and_the_requeued_run_resumes(trained_project, tmp_path):
    project, reference = _copy(trained_project, tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    fake = bin_dir / "scontrol"  # SLURM's own command line, absent here: record how it was called
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    proc = subprocess.Popen([*WF, "phase", "baseline"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_steps(project, reference, 60, proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 138, out[-2000:] + err
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "SLURM job 4242 is requeued" in err
    state = _state(project)
    run = state["runs"][-1]
    # steps.csv is flushed ten steps at a time: the signal can land on the very step the 60th row was written
    assert run["status"] == "interrupted" and run["summary"]["resume"]["step"] >= 60
    requeued = [e for e in state["history"] if e["event"] == "job_requeued"]
    assert requeued and requeued[-1]["job_id"] == "4242" and requeued[-1]["requeued"] is True
    _resume(project)  # what the requeued job's script runs (SLURM_RESTART_COUNT > 0)
    assert _state(project)["runs"][-1]["status"] in ("completed", "early_stopped")
    assert _same_weights(project, reference, run)


def test_sigusr1_outside_slurm_saves_and_says_nothing_was_requeued(tmp_path):
    from mlflow_core.config import load_config_text
    from mlflow_core.training.trainer import Trainer

    cfg = load_config_text("training: {device: cpu, epochs: 2}\nmodel: {channels: [8]}\n", "t")
    result = Trainer(cfg, tmp_path, tmp_path / "r", stop_on_signals=True,
                     on_progress=lambda p: os.kill(os.getpid(), signal.SIGUSR1) if p.global_step == 20 else None).fit()
    assert result.status == "interrupted" and result.metrics["steps"] == 20
    assert result.metrics["resume"]["step"] == 20 and "SIGUSR1" in result.metrics["stop_reason"]


# --- a disk that refuses writes ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_refused_write_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch, code):
    from mlflow_core import atomic
    from mlflow_core.errors import StorageError

    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"version": 1})

    def refuse(_fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", refuse)  # the disk: refuses after the data went to the temp file
    with pytest.raises(StorageError) as caught:
        atomic.atomic_write_json(target, {"version": 2})
    assert str(target) in caught.value.message and atomic.STORAGE_ERRNOS[code] in caught.value.message
    assert json.loads(target.read_text()) == {"version": 1}
    assert list(tmp_path.iterdir()) == [target]  # no temp file left


def test_a_file_too_large_for_torch_save_is_a_storage_error_not_a_torch_error(tmp_path):
    """torch.save reports a refused write as a RuntimeError; the OSError behind it is what counts."""
    from mlflow_core.errors import StorageError
    from mlflow_core.training.checkpoint import save_checkpoint

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(4)})
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the kernel refuses bigger files (EFBIG)
    try:
        with pytest.raises(StorageError, match="larger than allowed"):
            save_checkpoint(path, {"w": torch.zeros(1_000_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    from mlflow_core.atomic import atomic_write_text

    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_text(tmp_path / "report.md", "x")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~mask
    (tmp_path / "report.md").chmod(0o640)
    atomic_write_text(tmp_path / "report.md", "y")  # a file replaced keeps the mode it had
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_disk_refusing_a_checkpoint_mid_run_stops_resumably_and_resume_finishes_exactly(trained_project, tmp_path):
    """A running `wf phase baseline` is limited, from outside, to files of 256 KiB: its next checkpoint
    (0.8 MB) is refused by the kernel (EFBIG). The run stops with exit 5 naming the file, the
    previous checkpoints are intact, and `--resume` (limit gone, as after freeing space) finishes it
    with the uninterrupted run's weights."""
    project, reference = _copy(trained_project, tmp_path)
    proc = subprocess.Popen([*WF, "phase", "baseline"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_steps(project, reference, 60, proc)  # epoch 1's checkpoints are written
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, out[-2000:] + err
    assert "checkpoints/" in err and "cannot be written" in err and "Traceback" not in err
    assert "wf phase baseline --resume" in err
    run = _state(project)["runs"][-1]
    assert run["status"] == "interrupted"
    checkpoints = project / run["dir"] / "checkpoints"
    for kept in checkpoints.glob("*.pt"):  # every checkpoint on disk is whole
        assert torch.load(kept, weights_only=True)["format"] == "wf-checkpoint"
    assert not list(checkpoints.glob(".*.tmp"))
    _resume(project)
    assert _same_weights(project, reference, run)


# --- kill -9 at the worst moment of each write -----------------------------------------------------

# Runs wf with os.replace wrapped: the N-th time the named file is about to be replaced, its new
# version complete in the temp file, the process SIGKILLs itself. A writer that truncated the file
# in place would leave it torn here.
KILL_AT = textwrap.dedent("""
    import os, signal, sys
    name, nth = sys.argv[1], int(sys.argv[2])
    real_replace, seen = os.replace, [0]
    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    from mlflow_core.cli import main
    main(sys.argv[3:])
""")


@pytest.mark.parametrize("name, nth", [("resume.pt", 3), ("baseline_results.md", 1), ("state.json", 2)],
                         ids=["checkpoint_write", "report_render", "state_update"])
def test_kill_9_while_replacing_a_file_leaves_the_previous_version_and_resume_works(trained_project, tmp_path,
                                                                                    name, nth):
    project, reference = _copy(trained_project, tmp_path)
    before = {p: p.read_bytes() for p in [project / "reports" / "baseline_results.md"]}
    killed = subprocess.run([sys.executable, "-c", KILL_AT, name, str(nth), "phase", "baseline"], cwd=project,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr
    leftovers = list(project.rglob(f".{name}.*.tmp"))
    assert len(leftovers) == 1  # killed mid-write: the new version never reached its name
    if name == "baseline_results.md":  # the first write of this run: the previous version is the old run's
        target = project / "reports" / name
        assert target.read_bytes() == before[target]  # byte for byte
    state = _state(project)  # parses, and says the run is still running (its process is gone)
    run = state["runs"][-1]
    assert run["phase"] == "baseline" and run["status"] == "running" and run["run_id"] != reference["run_id"]
    if name == "resume.pt":
        resume = torch.load(project / run["dir"] / "checkpoints" / "resume.pt", weights_only=True)
        assert resume["kind"] == "resume" and resume["global_step"] > 0  # the previous resume point, whole
    status = subprocess.run([*WF, "status", "--json"], cwd=project, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["next"].startswith("wf phase baseline --resume")  # no process holds it
    _resume(project)
    assert not list(project.rglob(f".{name}.*.tmp"))  # the next writer cleared the leftover
    final = _state(project)["runs"][-1]
    assert final["run_id"] == run["run_id"] and final["status"] in ("completed", "early_stopped")
    assert _same_weights(project, reference, run)
