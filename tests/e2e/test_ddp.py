"""Data-parallel training with DDP: 2 CPU processes with the gloo backend, started by
`wf phase baseline --nproc-per-node 2` (wf's own launcher for one machine), each a real process."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import configure

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WF = [sys.executable, "-m", "mlflow_core"]
OVERRIDE = ["--override-gate", "testing data-parallel training"]


def _wf(project, *args, timeout=300):
    return subprocess.run([*WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def project(tmp_path):
    from mlflow_core.workflow.scaffold import init_project

    root = init_project(tmp_path / "p").root
    # the template's wider simple_cnn: its checkpoint (~1.6 MB) is what the refused-write test limits,
    # and its first epochs are what the single-process comparison's tolerances were set on
    configure(root, [("training.epochs", "3"), ("early_stopping.enabled", "false"),
                     ("model.channels", "[32, 64, 128, 256]")])
    return root


def _latest(project, phase="baseline"):
    state = json.loads((project / ".wf" / "state.json").read_text())
    run = [r for r in state["runs"] if r["phase"] == phase][-1]
    metrics = json.loads((project / run["dir"] / "logs" / "metrics.json").read_text())
    return run, metrics


def test_ddp_smoke_two_gloo_processes_records_nothing(project):
    before = sorted(p.name for p in project.rglob("*"))
    r = _wf(project, "phase", "baseline", "--smoke", "--nproc-per-node", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "completed │ 2 " in r.stdout
    assert sorted(p.name for p in project.rglob("*")) == before


def test_ddp_baseline_matches_the_single_process_run(project, tmp_path):
    """Two ranks of batch 32 train on the whole data each epoch (half each) and agree on every
    figure; the result matches one process with batch 64 within tolerance (the sample order differs),
    and only rank 0 wrote files."""
    single = tmp_path / "single"
    shutil.copytree(project, single)
    configure(single, [("training.batch_size", "64")])
    assert _wf(single, "phase", "baseline", *OVERRIDE).returncode in (0, 1)
    r = _wf(project, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr
    _run, ddp = _latest(project)
    _, one = _latest(single)
    assert ddp["status"] == one["status"] == "completed"
    assert ddp["steps"] == one["steps"]  # 2 × 32 per step against 64: the same number of steps
    n = one["data"]["val_size"]
    for a, b in zip(ddp["epochs"], one["epochs"]):
        # the sample orders differ: two accuracies on n validation samples differ by chance with a
        # standard error of sqrt(2p(1-p)/n) (0.024 at the first epoch's 12 %); three of them at most
        p = (a["val_accuracy"] + b["val_accuracy"]) / 2
        assert abs(a["val_accuracy"] - b["val_accuracy"]) < max(0.03, 3 * math.sqrt(2 * p * (1 - p) / n))
        assert abs(a["val_loss"] - b["val_loss"]) < 0.1
        assert len(a["data_wait_fraction_by_rank"]) == 2
    assert "Waiting for data by rank (mean over epochs): rank 0 " in (project / "reports" / "baseline_results.md").read_text()
    logs = list((project / "runs").rglob("steps.csv"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) == ddp["steps"] + 1  # rank 0's alone


def test_ddp_sigterm_stops_every_rank_at_one_step_and_resume_is_exact(project, tmp_path):
    # resumed against uninterrupted, both data-parallel: exact whatever the model, so a small one
    configure(project, [("model.channels", "[8, 16]")])
    uninterrupted = tmp_path / "whole"
    shutil.copytree(project, uninterrupted)
    assert _wf(uninterrupted, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE).returncode in (0, 1)
    proc = subprocess.Popen([*WF, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((project / "runs").glob("baseline-*/logs/steps.csv"))
        if logs and len(logs[0].read_text().splitlines()) > 30:  # into epoch 2 (23 steps an epoch)
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it to both ranks
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err
    assert "wf phase baseline --resume` with the same 2 processes" in err
    run, _metrics = _latest(project)
    assert run["status"] == "interrupted"
    resume = torch.load(project / run["dir"] / "checkpoints" / "resume.pt", weights_only=True)
    assert resume["world_size"] == 2 and len(resume["by_rank"]) == 2
    status = json.loads(_wf(project, "status", "--json").stdout)
    assert status["next"].startswith("wf phase baseline --resume --nproc-per-node 2 ")
    wrong = _wf(project, "phase", "baseline", "--resume")  # one process cannot continue two ranks exactly
    assert wrong.returncode == 2 and "--nproc-per-node 2" in wrong.stderr
    r = _wf(project, "phase", "baseline", "--resume", "--nproc-per-node", "2")
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr
    done, _ = _latest(project)
    whole, _ = _latest(uninterrupted)
    a = torch.load(project / done["dir"] / "checkpoints" / "last_model.pt", weights_only=True)["model"]
    b = torch.load(uninterrupted / whole["dir"] / "checkpoints" / "last_model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The pid of one rank that `wf phase … --nproc-per-node` started (found by parent and RANK)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher.pid and f"RANK={rank}".encode() in env:
                return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"rank {rank} did not start")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks through /proc")
def test_ddp_a_rank_killed_mid_run_stops_the_others_at_once_and_the_run_resumes(project):
    """kill -9 of rank 1 after the first resume checkpoint: rank 0's collective fails at once (not
    after the 10-minute collective timeout); it records the run as interrupted and exits 6."""
    proc = subprocess.Popen([*WF, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    follower = _rank_pid(proc, 1)
    deadline = time.time() + 120
    while time.time() < deadline and not list((project / "runs").glob("baseline-*/checkpoints/resume.pt")):
        time.sleep(0.02)
    os.kill(follower, signal.SIGKILL)
    killed_at = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, out[-2000:] + err
    assert time.time() - killed_at < 30  # the launcher's grace, not the collective timeout
    assert "another rank left the run" in err and "wf phase baseline --resume` with the same 2 processes" in err
    run, metrics = _latest(project)
    assert run["status"] == "interrupted" and metrics["status"] == "interrupted"
    r = _wf(project, "phase", "baseline", "--resume", "--nproc-per-node", "2")
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr
    assert _latest(project)[1]["status"] == "completed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_ddp_kill_9_of_the_launcher_stops_the_ranks_resumably(project):
    """The ranks do not train on as orphans holding the project: SIGTERM reaches them, they agree on
    a step, save, record the run as interrupted and exit."""
    proc = subprocess.Popen([*WF, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks = [_rank_pid(proc, 0), _rank_pid(proc, 1)]
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((project / "runs").glob("baseline-*/logs/steps.csv"))
        if logs and len(logs[0].read_text().splitlines()) > 30:  # into epoch 2
            break
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=120)  # the pipes close when the ranks close them, late in their exit

    def state(pid):  # "gone", or "Z": a zombie left to a reaper that does not reap (a container's init)
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    deadline = time.time() + 30  # interpreter and gloo teardown may outlast the closed pipes a little
    while time.time() < deadline and any(state(pid) not in ("gone", "Z") for pid in ranks):
        time.sleep(0.05)
    for pid in ranks:
        assert state(pid) in ("gone", "Z"), f"rank pid {pid} still runs ({state(pid)})"
    run, metrics = _latest(project)  # resumable as after any SIGTERM (whose resume the test above checks)
    assert run["status"] == "interrupted" and metrics["stop_reason"].startswith("SIGTERM")
    assert metrics["resume"]["step"] >= 30  # at or after the last step the log showed before the kill


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux prlimit")
def test_ddp_a_write_refused_on_rank_0_stops_every_rank_with_its_reason(project):
    """Rank 0 alone writes; when the disk refuses its checkpoint, the other rank (inside the next
    step's collective) stops at once too, instead of waiting for the collective timeout."""
    import resource

    proc = subprocess.Popen([*WF, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resource.prlimit(_rank_pid(proc, 0), resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a checkpoint is ~1.6 MB
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 5, out[-2000:] + err
    assert "(rank 0) baseline stopped:" in err and "cannot be written" in err
    assert "(rank 1) another rank left the run" in err and "Traceback" not in err


DATA_MISSING_ON_RANK_0 = '''
import os

from mlflow_core.errors import DataError


def build(**_):
    if os.environ.get("RANK") == "0":  # a node whose copy of the data is incomplete
        raise DataError("data/shard_0.npz: not found on this node")
    from sklearn.datasets import load_digits
    import torch
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    return {"train": torch.utils.data.TensorDataset(x[:1400], y[:1400]),
            "val": torch.utils.data.TensorDataset(x[1400:], y[1400:])}
'''


def test_ddp_an_error_on_rank_0_before_the_first_step_releases_the_other_rank(project):
    """Rank 0 fails while building its data; rank 1 already waits in DDP's first broadcast. It is
    released at once with its own message (before: it waited for the collective timeout)."""
    (project / "shard_data.py").write_text(DATA_MISSING_ON_RANK_0)
    configure(project, [("data.source", "custom"), ("data.target", '"shard_data:build"'),
                         ("data.num_classes", "10")])
    started = time.time()
    r = _wf(project, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr  # rank 0's verdict: bad input
    assert "(rank 0) data/shard_0.npz: not found on this node" in r.stderr
    assert "(rank 1) another rank left the run before training started" in r.stderr
    assert "Traceback" not in r.stderr and time.time() - started < 60


NAN_ON_ONE_SAMPLE = '''
import torch
from sklearn.datasets import load_digits


def build(**_):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    x[777] = float("nan")  # one sample: it lands in one rank's share of one batch
    train = torch.utils.data.TensorDataset(x[:1400], y[:1400])
    val = torch.utils.data.TensorDataset(x[1400:], y[1400:])
    return {"train": train, "val": val}
'''


def test_ddp_a_nan_on_one_rank_stops_all_ranks(project):
    (project / "nan_data.py").write_text(NAN_ON_ONE_SAMPLE)
    configure(project, [("data.source", "custom"), ("data.target", '"nan_data:build"'),
                         ("data.num_classes", "10")])
    r = _wf(project, "phase", "baseline", "--nproc-per-node", "2", *OVERRIDE, timeout=180)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr  # no rank left waiting: the run ends, failed
    _run, metrics = _latest(project)
    assert metrics["status"] == "failed_nan" and metrics["nonfinite"]["step"] < 23  # in the first epoch


def test_ddp_refuses_phases_that_do_not_train(project):
    r = _wf(project, "phase", "setup", "--nproc-per-node", "2")
    assert r.returncode == 2 and "data-parallel phases: baseline, optimization, finalization" in r.stderr


def test_ddp_under_plain_torchrun(project):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "mlflow_core", "phase", "baseline", "--smoke"], cwd=project, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert r.stdout.count("completed │ 2 ") == 1  # rank 0 speaks for the run


def test_ddp_smoke_of_finalization_folds(project):
    """Folds pool train and val (Subset of ConcatDataset), weighted draws shared across ranks. (The
    optimization phase under DDP, trials and comparison runs, is the test below, in full.)"""
    configure(project, [("finalization.folds", "2"), ("data.sampling", "class_balanced")])
    r = _wf(project, "phase", "finalization", "--smoke", "--nproc-per-node", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "2 training run(s)" in r.stdout and r.stdout.count("completed │ 2 ") == 2


def test_ddp_optimization_every_trial_data_parallel_and_pruning_agreed(project):
    """Each trial and comparison run is data-parallel; the pruner's verdict, taken on rank 0, stops
    every rank (a follower left training would hang the next run's collectives)."""
    configure(project, [("optimization.n_trials", "3"), ("optimization.trial_epochs", "2"),
                         ("optimization.seeds", "2"), ("training.epochs", "2"), ("optimization.lr_find", "false"),
                         ("model.channels", "[8, 16]")])
    r = _wf(project, "phase", "optimization", "--nproc-per-node", "2", *OVERRIDE, timeout=400)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr
    facts = json.loads((project / ".wf" / "evidence" / "optimization.json").read_text())["facts"]
    counts = facts["study"]["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 3 and counts["FAIL"] == 0
    assert len(facts["comparison"]["baseline"]) == 2
