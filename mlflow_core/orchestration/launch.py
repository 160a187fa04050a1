"""Starting and following multi-process (DDP) runs, one machine or many.

A wf command runs as N processes when a launcher sets the usual environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): `torchrun … -m mlflow_core phase baseline`, SLURM's `srun`
around torchrun (`wf slurm`), or `wf phase baseline --nproc-per-node N`, which starts the processes
of one machine itself (`launch_local`). Rank 0 is the wf command a person would run: it takes the
project lock, checks the gate, records the run and writes every file (`leading`). The other ranks
follow: they wait for rank 0's plan (run id, resume checkpoint, smoke limits), train their share of
each batch and write nothing (`follow`). The process group itself is training/parallel.py's; this
module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from mlflow_core.config.loader import load_config
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import WfError
from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.world import World

# --- a launcher for one machine -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def _stop_with_parent(parent: int) -> Any:
    """For a rank's process (Linux): SIGTERM when the launcher dies, even by kill -9, so that the
    ranks save a resume checkpoint and release the project instead of training on as orphans."""
    if not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:  # in the child, between fork and exec
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return arrange


def rank_threads(nproc: int) -> dict[str, str]:
    """Each rank's share of the machine's cores for torch's CPU thread pool, as torchrun sets it
    (torchrun: 1): N ranks that each start a pool of every core oversubscribe the CPU, and on a
    CPU-only run that costs more than the extra threads gain. A person's OMP_NUM_THREADS stays."""
    if nproc <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": str(max(1, cores // nproc))}


def launch_local(args: list[str], nproc: int, *, grace_s: float = 30.0) -> int:
    """Run `python -m mlflow_core ARGS` as `nproc` ranks on this machine and return rank 0's exit
    code. Signals go to every rank (they agree on the step to stop at); if a rank fails while the
    others still run, the others are stopped after `grace_s` instead of waiting in a collective;
    if the launcher itself is killed, every rank gets SIGTERM (see _stop_with_parent)."""
    port = free_port()
    procs = []
    threads = rank_threads(nproc)
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **threads}
        quiet = {} if rank == 0 else {"stdout": subprocess.DEVNULL}  # rank 0 speaks for the run
        procs.append(subprocess.Popen([sys.executable, "-m", "mlflow_core", *args], env=env,
                                      preexec_fn=_stop_with_parent(os.getpid()), **quiet))

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        failed_at = None
        while any(p.poll() is None for p in procs):
            codes = [p.poll() for p in procs]
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return procs[0].returncode


def configured_device(config_path: Any) -> str:
    """training.device of the project's config, read the same way by every rank (a config that
    does not load: "auto"; rank 0 reports the problem, the followers just wait for its verdict)."""

    try:
        return load_config(config_path).training.device
    except WfError:
        return "auto"


class Announcer:
    """Rank 0's side: one plan before each training run of the phase, then None when the command
    ends (or stops early, e.g. at a closed gate), which lets the followers exit."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, plan: dict[str, Any]) -> None:
        # torch: only the ranks of a DDP run need it
        from mlflow_core.training.parallel import broadcast_plan
        broadcast_plan(plan)

    def close(self) -> None:
        # torch: only the ranks of a DDP run need it
        from mlflow_core.training.parallel import broadcast_plan, in_process_group

        if not self.closed and in_process_group():  # not after abandon_process_group: nobody listens
            self.closed = True
            broadcast_plan(None)


@contextlib.contextmanager
def leading(world: World, config_path: Any) -> Iterator[Announcer]:
    """Rank 0's command inside the process group: whatever happens, the followers hear a plan."""
    # torch: only the ranks of a DDP run need it
    from mlflow_core.training.parallel import destroy_process_group, init_process_group

    init_process_group(world, configured_device(config_path))
    announcer = Announcer()
    clean = False
    try:
        yield announcer
        clean = True
    except WfError:  # a refusal before training (the gate, bad input) or a recorded outcome: all ranks are fine
        clean = True
        raise
    finally:
        try:
            announcer.close()
        finally:
            destroy_process_group(clean)


def leave_process(code: object) -> NoReturn:
    """End a follower's process once its command is over, skipping the interpreter's shutdown
    (flushed first; it writes no file, rank 0 records and reports). Under DDP torch keeps the gloo
    process group, and its worker threads, alive to the end of the process, whatever
    destroy_process_group was called: DistributedDataParallel holds on to it. A worker that frees
    its last collective's tensors while the interpreter shuts down cannot take the GIL, and the
    process aborts with "terminate called without an active exception" (SIGABRT), which torchrun
    reports as a failed run (measured and fixed: bench/README.md, "DDP followers' exit")."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def follow(project: Any, world: World) -> int:
    """A rank other than 0: for each of rank 0's plans, train its share of that run; write nothing."""
    from pathlib import Path

    # torch: only the ranks of a DDP run need it
    from mlflow_core.training.parallel import broadcast_plan, destroy_process_group, init_process_group
    from mlflow_core.training.trainer import recorded_trainer

    init_process_group(world, configured_device(project.config_path))
    clean = False
    try:
        while (plan := broadcast_plan(None)) is not None:  # one plan per training run of the phase
            cfg = WorkflowConfig.model_validate(plan["config"])
            resume = Path(plan["resume_from"]) if plan.get("resume_from") else None
            sampler = None
            if world.local_rank == 0:  # each node's first rank samples that node's GPUs for the report
                sampler = GpuSampler(cfg.monitoring.gpu_sample_interval_s, cfg.monitoring.gpu_utilization_target)
            data = None
            if plan.get("data_spec"):  # a fold of cross-validation: built here as rank 0 built it
                # torch: only the ranks of a DDP run need it
                from mlflow_core.training.folds import fold_data
                data = fold_data(cfg, project.root, **plan["data_spec"])
            recorded_trainer(cfg, project.root, Path(plan["run_dir"]), run_id=plan["run_id"], phase=plan["phase"],
                             world=world, resume_from=resume, limits=plan["limits"], gpu_sampler=sampler,
                             data=data).fit()
        clean = True
        return 0
    finally:
        destroy_process_group(clean)
