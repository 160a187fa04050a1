"""`wf slurm`: the batch script's content and syntax, hostile values refused, and the SLURM
lifecycle played with stand-ins for `srun` and `scontrol` (SLURM itself is absent here): the
script runs wf, SLURM's USR1 warning makes wf save and requeue the job, and the requeued script
resumes the run to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_sbatch_script_for_two_nodes(wf, tmp_path):
    from mlflow_core.orchestration.slurm import SlurmJob, sbatch_script

    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("slurm", "baseline", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time",
           "1-12:00:00", "--account", "lab6", "--mem", "64G", "--cpus-per-task", "16", cwd=tmp_path / "p")
    assert r.code == 0, r.err
    path = tmp_path / "p" / "slurm" / "baseline.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --signal=USR1@90", "#SBATCH --requeue",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab6", "#SBATCH --time=1-12:00:00",
                 "#SBATCH --mem=64G", "#SBATCH --cpus-per-task=16", "#SBATCH --open-mode=append",
                 "#SBATCH --output=slurm/logs/%x-%j.out"):
        assert line in text, line
    assert "--rdzv-backend=c10d" in text and '--rdzv-endpoint="$head:29500"' in text and "--nproc-per-node=4" in text
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in text
    assert 'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume="--resume"; fi' in text
    assert (tmp_path / "p" / "slurm" / "logs").is_dir()
    # the script names no path of this machine: the project can be copied to the cluster and submitted there
    assert str(tmp_path) not in text and sys.executable not in text
    assert 'cd "${SLURM_SUBMIT_DIR:-$PWD}"' in text and 'py="${WF_PYTHON:-python3}"' in text
    one = sbatch_script(SlurmJob("baseline"), "p")
    assert '"$py" -m mlflow_core phase baseline $resume' in one
    assert "torch.distributed.run" not in one  # one process: srun runs wf itself
    setup = sbatch_script(SlurmJob("setup"), "p")  # no training state: a requeued setup runs again
    assert "--resume" not in setup and setup.rstrip().endswith('"$py" -m mlflow_core phase setup')

    # written again without options, the script keeps the ones given before, and says so
    again = wf("slurm", "baseline", "--time", "2:00:00", cwd=tmp_path / "p")
    assert again.code == 0 and "Kept from the script written before: --nodes 2 --gpus-per-node 4" in again.out
    text = path.read_text()
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=2:00:00" in text and "#SBATCH --nodes=2" in text
    assert wf("slurm", "baseline", "--reset", cwd=tmp_path / "p").code == 0
    assert "--partition" not in path.read_text() and "#SBATCH --nodes=1" in path.read_text()


@pytest.mark.parametrize("option, value", [("--partition", "gpu\n#SBATCH --wrap=rm -rf ~"),
                                           ("--account", "lab;reboot"), ("--time", "soon"), ("--mem", "lots"),
                                           ("--job-name", "a b")])
def test_hostile_or_malformed_values_are_refused(wf, tmp_path, option, value):
    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("slurm", "baseline", option, value, cwd=tmp_path / "p")
    assert r.code == 2 and option in r.err and "not a SLURM value" in r.err
    assert not (tmp_path / "p" / "slurm" / "baseline.sbatch").exists()


def test_several_gpus_need_a_data_parallel_phase_and_submit_needs_slurm(wf, tmp_path, monkeypatch):
    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("slurm", "diagnostics", "--gpus-per-node", "2", cwd=tmp_path / "p")
    assert r.code == 2 and "data-parallel phases: baseline, optimization, finalization" in r.err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    r = wf("slurm", "baseline", "--submit", cwd=tmp_path / "p")
    assert r.code == 2 and "SLURM is not available on this machine" in r.err


def _fake_sbatch(tmp_path, monkeypatch, body: str) -> None:
    """SLURM's sbatch, absent here: a shell script of `body` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\n{body}")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_submit_calls_sbatch_with_the_script(wf, tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, f"echo \"$@\" > {tmp_path / 'sbatch.args'}\npwd > {tmp_path / 'sbatch.cwd'}\n"
                                         "echo 'Submitted batch job 1234'\n")
    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("slurm", "baseline", "--submit", cwd=tmp_path / "p")
    assert r.code == 0 and "Submitted batch job 1234" in r.out
    assert (tmp_path / "sbatch.args").read_text().strip() == f"--parsable {tmp_path / 'p' / 'slurm' / 'baseline.sbatch'}"
    # submitted from the project's root, wherever wf ran: the job runs where it is submitted
    assert Path((tmp_path / "sbatch.cwd").read_text().strip()).resolve() == (tmp_path / "p").resolve()


def test_a_sweep_as_a_job_array_of_workers_then_one_final_step(wf, tmp_path, monkeypatch):
    """`--workers 4`: an array of 4 `--worker` tasks, and the final step submitted after it ends."""
    _fake_sbatch(tmp_path, monkeypatch, f"echo \"$@\" >> {tmp_path / 'sbatch.args'}\n"
                                         "case \"$*\" in *dependency*) echo '901';; *) echo '900';; esac\n")
    assert wf("init", "p", cwd=tmp_path).code == 0
    project = tmp_path / "p"
    r = wf("slurm", "optimization", "--workers", "4", "--time", "2:00:00", cwd=project)
    assert r.code == 0, r.err
    assert "SQLite does not lock reliably" in " ".join(r.out.split())  # the default storage, across nodes
    array = (project / "slurm" / "optimization.sbatch").read_text()
    assert "#SBATCH --array=1-4" in array and "#SBATCH --time=2:00:00" in array
    assert 'srun --kill-on-bad-exit=1 "$py" -m mlflow_core phase optimization --worker\n' in array
    assert "%A_%a.out" in array and "$resume" not in array.split("srun")[-1]
    final = (project / "slurm" / "optimization-final.sbatch").read_text()
    assert "--array" not in final and "--worker" not in final and "phase optimization $resume" in final
    r = wf("slurm", "optimization", "--submit", cwd=project)  # --workers 4 kept from the script before
    assert r.code == 0 and "Submitted the workers as job 900 and the final step as job 901 (after 900 ends)" in r.out
    calls = (tmp_path / "sbatch.args").read_text().splitlines()
    assert calls[0].endswith("slurm/optimization.sbatch")
    assert calls[1].startswith("--parsable --dependency=afterany:900 ") and calls[1].endswith("optimization-final.sbatch")
    bad = wf("slurm", "baseline", "--workers", "2", cwd=project)
    assert bad.code == 2 and "--workers runs trials of `wf phase optimization`" in bad.err


def test_the_script_says_what_is_wrong_where_it_runs(wf, tmp_path):
    """Submitted from elsewhere than the project's root, or without the environment that has wf: one
    line saying what to do, exit 2, before anything starts."""
    assert wf("init", "p", cwd=tmp_path).code == 0
    assert wf("slurm", "baseline", "--gpus-per-node", "0", cwd=tmp_path / "p").code == 0
    script = str(tmp_path / "p" / "slurm" / "baseline.sbatch")
    elsewhere = subprocess.run(["bash", script], cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert elsewhere.returncode == 2 and "is not a wf project's root" in elsewhere.stderr
    no_wf = subprocess.run(["bash", script], cwd=tmp_path / "p", capture_output=True, text=True,
                           env={**os.environ, "WF_PYTHON": "/bin/false"})
    assert no_wf.returncode == 2 and "/bin/false cannot import wf" in no_wf.stderr


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _started(project: Path, reference: str) -> bool:
    try:
        runs = json.loads((project / ".wf" / "state.json").read_text())["runs"]
    except (OSError, ValueError):
        return False
    return runs[-1]["run_id"] != reference and runs[-1]["status"] == "running"


def _trained_60_steps(project: Path, reference: str) -> bool:
    fresh = [p for p in (project / "runs").glob("baseline-*/logs/steps.csv") if reference not in str(p)]
    return bool(fresh) and len(fresh[0].read_text().splitlines()) > 60


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job step's process through /proc")
@pytest.mark.parametrize("when", ["training", "start-up"])
def test_slurm_lifecycle_usr1_requeue_then_resume(trained_project, tmp_path, when):
    """SLURM's warning while the run trains (saved at a resume point) or as soon as it is recorded
    (before its first resume point): requeued either way, and the requeued job ends with the weights
    of the run that was never stopped."""
    torch = pytest.importorskip("torch")
    project = tmp_path / "q"
    shutil.copytree(trained_project, project)
    reference = next(r for r in json.loads((project / ".wf" / "state.json").read_text())["runs"]
                     if r["phase"] == "baseline")
    assert subprocess.run([sys.executable, "-m", "mlflow_core", "slurm", "baseline", "--gpus-per-node", "0"],
                          cwd=project, capture_output=True).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its options and become the job step; scontrol: record the call
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "0",
           "WF_PYTHON": sys.executable}  # the environment's python, as an activated environment gives
    job = subprocess.Popen(["bash", "slurm/baseline.sbatch"], cwd=project, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    ready = _trained_60_steps if when == "training" else _started
    deadline = time.time() + 120
    while time.time() < deadline and not ready(project, reference["run_id"]):
        time.sleep(0.02)
    step = _children(job.pid)
    assert len(step) == 1
    os.kill(step[0], signal.SIGUSR1)  # SLURM's warning goes to the job step, not to the batch shell
    out, err = job.communicate(timeout=120)
    assert job.returncode == 138, out[-2000:] + err
    if when == "start-up":
        assert "before its training began" in out + err
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "77"]
    run = json.loads((project / ".wf" / "state.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted"
    # SLURM starts the requeued job's script again, with SLURM_RESTART_COUNT raised
    again = subprocess.run(["bash", "slurm/baseline.sbatch"], cwd=project, env={**env, "SLURM_RESTART_COUNT": "1"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    final = json.loads((project / ".wf" / "state.json").read_text())["runs"][-1]
    assert final["run_id"] == run["run_id"] and final["status"] in ("completed", "early_stopped")
    a = torch.load(project / reference["dir"] / "checkpoints" / "last_model.pt", weights_only=True)["model"]
    b = torch.load(project / run["dir"] / "checkpoints" / "last_model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
