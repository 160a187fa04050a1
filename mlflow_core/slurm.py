"""SLURM: requeueing a preempted job. Never imports torch; user strings never reach a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


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
