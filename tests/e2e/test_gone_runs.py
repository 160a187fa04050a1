"""A run whose process is gone is shown and recorded as what it is, interrupted at its last resume
point; a signal at any moment after the run is recorded ends the command with its exit code and the
run with a record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import configure

pytest.importorskip("torch")

WF = [sys.executable, "-m", "mlflow_core"]


def _state(project: Path) -> dict:
    return json.loads((project / ".wf" / "state.json").read_text())


def _start(project: Path) -> subprocess.Popen:
    return subprocess.Popen([*WF, "phase", "baseline", "--override-gate", "tests: a long run"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _latest(project: Path) -> dict | None:
    try:
        runs = _state(project)["runs"]
    except (OSError, ValueError):
        return None
    return runs[-1] if runs and runs[-1]["phase"] == "baseline" and runs[-1]["status"] == "running" else None


def test_a_run_killed_9_shows_interrupted_and_the_next_command_records_it(wf, project_copy):
    configure(project_copy, [("training.epochs", "30"), ("early_stopping.enabled", "false"),
                             ("checkpointing.resume_every_n_steps", "7")])
    run = _start(project_copy)
    _wait_for(lambda: _latest(project_copy) is not None)
    record = _latest(project_copy)
    point = project_copy / record["dir"] / "checkpoints" / "resume.json"
    _wait_for(lambda: point.is_file())
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    step = json.loads(point.read_text())["step"]
    assert step % 7 == 0 or step % 34 == 0  # a resume point: a multiple of 7, or an epoch's end

    shown = wf("status", "--json", cwd=project_copy)
    assert shown.code == 0
    latest = json.loads(shown.out)["runs"][0]
    assert latest["status"] == "interrupted" and latest["summary"]["resume"]["step"] == step
    assert _state(project_copy)["runs"][-1]["status"] == "running"  # status shows it; it writes nothing
    rows = wf("runs", "--json", cwd=project_copy)
    assert json.loads(rows.out)[0]["status"] == "interrupted"

    assert wf("checklist", "tick", "post_baseline", "results_reviewed", cwd=project_copy).code == 0  # any locked command
    recorded = _state(project_copy)["runs"][-1]
    assert recorded["status"] == "interrupted" and recorded["summary"]["resume"]["step"] == step
    assert "process is gone" in recorded["summary"]["stopped"]
    resumed = subprocess.run([*WF, "phase", "baseline", "--resume", "--override-gate", "tests"], cwd=project_copy,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stdout[-2000:] + resumed.stderr
    assert "resumed at epoch" in (project_copy / recorded["dir"] / "logs" / "training.log").read_text()


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGUSR1", 138)])
def test_a_signal_as_soon_as_the_run_is_recorded_ends_with_its_code_and_a_recorded_run(project_copy, name, code):
    run = _start(project_copy)
    _wait_for(lambda: _latest(project_copy) is not None, timeout=120)
    os.kill(run.pid, getattr(signal, name))
    out, err = run.communicate(timeout=300)
    assert run.returncode == code, out[-2000:] + err
    assert "Traceback" not in out + err
    assert "wf phase baseline --resume" in out + err  # the hint: the run continues, whenever it stopped
    last = _state(project_copy)["runs"][-1]
    assert last["status"] == "interrupted" and last["finished_at"]
    if name != "SIGTERM":
        return
    # stopped before its first resume point: --resume starts the same run again from step 0
    resumed = subprocess.run([*WF, "phase", "baseline", "--resume"], cwd=project_copy, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stdout[-2000:] + resumed.stderr
    assert "starts again from step 0" in resumed.stdout + resumed.stderr
    final = _state(project_copy)["runs"][-1]
    assert final["run_id"] == last["run_id"] and final["status"] in ("completed", "early_stopped")
