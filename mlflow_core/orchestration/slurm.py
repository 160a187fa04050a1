"""SLURM: requeueing a preempted job. Never imports torch; user strings never reach a shell."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_text
from mlflow_core.config.loader import load_config
from mlflow_core.errors import UserInputError
from mlflow_core.workflow.phases import DISTRIBUTED_PHASES, RESUMABLE_PHASES


def slurm_job_id() -> str | None:
    """The job this process runs in, if any (SLURM_JOB_ID, as sbatch sets it)."""
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    return job if job.isdigit() else None


def requeue_job(job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """`scontrol requeue JOB`: the job goes back to pending and its batch script runs again, with
    SLURM_RESTART_COUNT raised, which makes wf's script add `--resume`. SLURM then stops this job,
    so the caller must have saved everything first."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return {"job_id": job_id, "requeued": False, "detail": "scontrol is not on PATH"}
    try:
        done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"job_id": job_id, "requeued": False, "detail": f"scontrol failed: {exc}"}
    detail = (done.stderr or done.stdout).strip()
    return {"job_id": job_id, "requeued": done.returncode == 0,
            "detail": detail or ("requeued" if done.returncode == 0 else f"scontrol exited {done.returncode}")}


# --- the batch script ------------------------------------------------------------------------------

# Values that land on #SBATCH lines are checked, not quoted: sbatch reads those lines itself, and a
# newline or '#' in a value could add a directive. Values on shell lines are quoted (shlex.quote).
_NAME = re.compile(r"^[A-Za-z0-9_.,+-]{1,64}$")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # minutes, H:MM:SS, D-HH:MM:SS …
_MEMORY = re.compile(r"^\d+[KMGT]?$")
RDZV_PORT = 29500
PREEMPTION_WARNING_S = 90


@dataclass(frozen=True)
class SlurmJob:
    phase: str
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    job_name: str | None = None
    workers: int = 0  # optimization: a job array of this many `--worker` tasks (the final step: FINAL_SUFFIX)

    @property
    def processes(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


def check_job(job: SlurmJob) -> None:

    for option, value, pattern, what in (("--partition", job.partition, _NAME, "letters, digits and _.,+-"),
                                         ("--account", job.account, _NAME, "letters, digits and _.,+-"),
                                         ("--job-name", job.job_name, _NAME, "letters, digits and _.,+-"),
                                         ("--time", job.time, _TIME, "minutes, H:MM:SS or D-HH:MM:SS"),
                                         ("--mem", job.mem, _MEMORY, "a number with K, M, G or T")):
        if value is not None and not pattern.match(value):
            raise UserInputError(f"{option} {value!r}: not a SLURM value here ({what}).")
    if job.nodes < 1 or job.gpus_per_node < 0:
        raise UserInputError("--nodes must be at least 1 and --gpus-per-node at least 0.")
    if job.workers and (job.phase != "optimization" or job.processes > 1):
        raise UserInputError("--workers runs trials of `wf phase optimization` in a job array, one process per "
                             "task: give it with `wf slurm optimization`, without several nodes or GPUs.")
    if job.workers < 0 or job.workers > 1000:
        raise UserInputError(f"--workers {job.workers}: between 1 and 1000 array tasks.")
    if job.processes > 1 and job.phase not in DISTRIBUTED_PHASES:
        raise UserInputError(f"`wf phase {job.phase}` runs in one process; several nodes or GPUs suit the "
                             f"data-parallel phases: {', '.join(DISTRIBUTED_PHASES)}.",
                             hint="Use --nodes 1 --gpus-per-node 1 for this phase.")


OPTIONS_MARK = "# wf slurm options: "  # the script's own options, read back by the next `wf slurm`


def sbatch_script(job: SlurmJob, project_name: str) -> str:
    """The batch script: SLURM's warning (USR1, 90 s before the end) reaches every wf process, rank
    0 saves and runs `scontrol requeue`, and the requeued job (SLURM_RESTART_COUNT > 0) resumes. It
    names no path of this machine: it runs from the directory it is submitted from (the project's
    root, wherever the project was copied) with the Python of the environment active at `sbatch`."""
    check_job(job)
    q = shlex.quote
    name = job.job_name or f"wf-{job.phase}"
    # relative to the submit directory, which sbatch makes the job's working directory
    directives = [f"--job-name={name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
                  "--output=slurm/logs/%x-%j.out", f"--signal=USR1@{PREEMPTION_WARNING_S}",
                  "--requeue", "--open-mode=append"]
    if job.gpus_per_node:
        directives.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.workers:  # a job array: its own name, one log per task
        directives = [f"--job-name={name}-workers" if d.startswith("--job-name=") else
                      "--output=slurm/logs/%x-%A_%a.out" if d.startswith("--output=") else d for d in directives]
        directives.append(f"--array=1-{job.workers}")
    for option, value in (("cpus-per-task", job.cpus_per_task), ("partition", job.partition),
                          ("account", job.account), ("time", job.time), ("mem", job.mem)):
        if value is not None:
            directives.append(f"--{option}={value}")
    wf = f'"$py" -m mlflow_core phase {q(job.phase)}'
    # workers claim trials again when restarted; a phase without training state runs again
    resumes = not job.workers and job.phase in RESUMABLE_PHASES
    if job.processes > 1:
        launch = (f'"$py" -m torch.distributed.run --nnodes="$SLURM_NNODES" '
                  f"--nproc-per-node={max(job.gpus_per_node, 1)} --rdzv-backend=c10d "
                  f"--rdzv-endpoint=\"$head:{RDZV_PORT}\" --rdzv-id=\"$SLURM_JOB_ID\" "
                  f"-m mlflow_core phase {q(job.phase)}")
        head = ('head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # the rendezvous host\n'
                "# torchrun passes SLURM's USR1 on to the wf processes (by default it would die of it)\n"
                "export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1\n")
    elif job.workers:  # trials only; a requeued or restarted task simply claims trials again
        launch, head = f"{wf} --worker", ""
    else:
        launch, head = wf, ""
    lines = ["#!/bin/bash",
             f"# Written by `wf slurm {job.phase}` for project {project_name!r}. `wf slurm` writes it again,",
             "# keeping these options unless told otherwise. Submit it from the project's root with",
             f"# `sbatch slurm/{job.phase}.sbatch` (or `wf slurm {job.phase} --submit`), the environment that has",
             "# wf installed active (SLURM passes it on), or WF_PYTHON set to its python.",
             OPTIONS_MARK + json.dumps(asdict(job), sort_keys=True),
             *(f"#SBATCH {d}" for d in directives),
             "",
             "set -euo pipefail",
             'cd "${SLURM_SUBMIT_DIR:-$PWD}"',
             "if [ ! -f .wf/state.json ]; then",
             f'  echo "wf: $PWD is not a wf project\'s root: submit with sbatch slurm/{job.phase}.sbatch from the folder '
             'that holds training_config.yaml" >&2; exit 2',
             "fi",
             'py="${WF_PYTHON:-python3}"',
             'if ! "$py" -c "import mlflow_core" 2>/dev/null; then',
             '  echo "wf: $py cannot import wf: activate the environment it is installed in (pip install -e .) '
             'before sbatch, or set WF_PYTHON to its python" >&2; exit 2',
             "fi",
             *(["# a requeued job (preempted, or `scontrol requeue` after SLURM's warning) continues its run",
                'resume=""',
                'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume="--resume"; fi'] if resumes else
               [f"# a requeued job runs the phase again: {job.phase} holds no training state to continue"]),
             'echo "wf: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}"',
             *([head.rstrip("\n")] if head else []),
             f"srun --kill-on-bad-exit=1 {launch}" + (" $resume" if resumes else ""),
             ""]
    if job.workers:
        lines[1:5] = [f"# Written by `wf slurm optimization --workers {job.workers}` for project {project_name!r}: "
                      f"{job.workers} array tasks,",
                      "# each `wf phase optimization --worker` on the project's study, then "
                      f"slurm/optimization{FINAL_SUFFIX}.sbatch",
                      "# (submitted with --dependency=afterany on this array) compares and reports once. Submit both "
                      "with",
                      "# `wf slurm optimization --workers N --submit` from the project's root, its environment active."]
    return "\n".join(lines)


FINAL_SUFFIX = "-final"  # slurm/optimization-final.sbatch: the step after a job array of workers


def previous_options(path: Path) -> dict[str, Any]:
    """The options of the script `wf slurm` wrote at `path` before ({} when there is none, or it was
    written by hand or by an earlier wf)."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(OPTIONS_MARK):
                options = json.loads(line[len(OPTIONS_MARK):])
                return {k: v for k, v in options.items() if k in SlurmJob.__dataclass_fields__ and k != "phase"}
    except (OSError, ValueError):
        pass
    return {}


def write_sbatch(project: Any, job: SlurmJob) -> Path:
    name = load_config(project.config_path).project.name
    text = sbatch_script(job, name)
    (project.root / "slurm" / "logs").mkdir(parents=True, exist_ok=True)  # sbatch opens --output there
    path = sbatch_path(project, job.phase)
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def sbatch_path(project: Any, phase: str) -> Path:
    return project.root / "slurm" / f"{phase}.sbatch"


def write_worker_scripts(project: Any, job: SlurmJob) -> tuple[Path, Path]:
    """The job array of workers (slurm/optimization.sbatch) and the final step that follows it
    (slurm/optimization-final.sbatch: the plain phase, which runs no trial the workers ran)."""
    workers = write_sbatch(project, job)
    final = replace(job, workers=0, job_name=f"{job.job_name or 'wf-optimization'}{FINAL_SUFFIX}")
    path = project.root / "slurm" / f"optimization{FINAL_SUFFIX}.sbatch"
    atomic_write_text(path, sbatch_script(final, load_config(project.config_path).project.name)
                      .replace("slurm/optimization.sbatch", f"slurm/optimization{FINAL_SUFFIX}.sbatch"))
    path.chmod(0o755)
    return workers, path


def submit(path: Path, after: str | None = None) -> str:
    """`sbatch PATH` (with `after`, a job id: once that job has ended, however it ended); its output
    (the job id). SLURM absent: a clear error."""

    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserInputError(f"sbatch is not on PATH: SLURM is not available on this machine; {path} is written.",
                             hint="Copy the project to the cluster and run `sbatch` there, or run `wf slurm` on a "
                                  "login node with --submit.")
    # from the project's root: the job runs where it was submitted (the script's `cd`, its log path)
    dependency = [f"--dependency=afterany:{after}"] if after else []
    done = subprocess.run([sbatch, "--parsable", *dependency, str(path)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=path.parent.parent)
    if done.returncode != 0:
        raise UserInputError(f"sbatch refused {path}: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()
