"""How a `wf phase NAME` command runs, decided from its options and from where the process stands
in a data-parallel launch, before anything starts (a bad combination is exit 2, with nothing run):

- `worker`: trials of a shared study only (`--worker`);
- `follow`: a DDP rank other than 0, which trains as rank 0 leads (under torchrun or srun);
- `launch`: `--nproc-per-node N` starts N ranks of this same command on this machine;
- `smoke`: the phase's pipeline on two steps per run, recording nothing (`--smoke`);
- `run`: the phase itself (rank 0 under a launcher).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_core.errors import UserInputError
from mlflow_core.workflow.phases import DISTRIBUTED_PHASES, load_phase
from mlflow_core.workflow.project import Project
from mlflow_core.world import world_from_env

TIME_LIMIT_RESERVE_S = 60.0  # kept back from --time-limit for the resume checkpoint, the record and the exit


@dataclass(frozen=True)
class PhaseMode:
    kind: str  # worker, follow, launch, smoke or run
    deadline: float | None = None  # time.monotonic() at which training stops (--time-limit, less the reserve)
    world: Any = None  # follow: this rank's place in the launch
    launch_args: list[str] = field(default_factory=list)  # launch: the command each rank runs


def phase_mode(name: str, *, override_gate: str | None, resume: bool, smoke: bool, nproc_per_node: int,
               time_limit: str | None, worker: bool) -> PhaseMode:
    load_phase(name)  # an unknown name is exit 2 before any display starts
    if smoke and (resume or override_gate is not None or time_limit is not None):
        raise UserInputError("--smoke runs outside the phase's record: it takes neither --resume, "
                             "--override-gate nor --time-limit.")
    if worker and (name != "optimization" or smoke or resume or nproc_per_node > 1):
        raise UserInputError("--worker runs trials of `wf phase optimization` only, without --smoke, --resume or "
                             "--nproc-per-node.")
    deadline = deadline_of(time_limit)  # from now: a bad value is exit 2 before anything starts
    if worker:
        return PhaseMode("worker", deadline)
    world = world_from_env()
    if world is not None and not world.is_writer:  # a DDP rank other than 0: it follows rank 0's lead
        return PhaseMode("follow", deadline, world)
    if nproc_per_node > 1:
        return PhaseMode("launch", deadline, launch_args=_launch_args(name, world, override_gate, resume, smoke,
                                                                      deadline))
    return PhaseMode("smoke" if smoke else "run", deadline)


def _launch_args(name: str, world: Any, override_gate: str | None, resume: bool, smoke: bool,
                 deadline: float | None) -> list[str]:
    """The arguments each rank of `--nproc-per-node` runs with, once the launch is known to work."""
    from mlflow_core.orchestration.preflight import missing_training_stack

    if world is not None:
        raise UserInputError("--nproc-per-node starts its own processes; under torchrun or srun leave it out.")
    if name not in DISTRIBUTED_PHASES:
        raise UserInputError(f"`wf phase {name}` runs in one process; data-parallel phases: "
                             f"{', '.join(DISTRIBUTED_PHASES)}.")
    if missing_training_stack():
        raise UserInputError("--nproc-per-node needs the training stack (torch).",
                             hint="Install it with `pip install 'wf-phases[train]'`.")
    Project.find()  # not a project: exit 2 here, not once per process
    args = ["phase", name, *(["--smoke"] if smoke else []), *(["--resume"] if resume else []),
            *(["--override-gate", override_gate] if override_gate is not None else [])]
    if deadline is not None:  # what is left of it when the ranks start, reserve included
        args += ["--time-limit", f"{deadline - time.monotonic() + TIME_LIMIT_RESERVE_S:.1f}"]
    return args


def parse_duration(text: str, option: str) -> float:
    """Seconds in '8h30m', '45m', '90s', '1h', '2:30:00' or a plain number of seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    clock = re.fullmatch(r"(\d+):([0-5]?\d):([0-5]?\d)", value)
    if clock:
        return int(clock[1]) * 3600 + int(clock[2]) * 60 + int(clock[3])
    units = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?", value)
    if units and any(units.groups()):
        h, m, sec = (float(g) if g else 0.0 for g in units.groups())
        return h * 3600 + m * 60 + sec
    raise UserInputError(f"{option} {text!r}: not a duration; write e.g. 8h30m, 45m, 90s or 2:30:00.")


def deadline_of(time_limit: str | None) -> float | None:
    """time.monotonic() at which training stops: the limit from now, less the reserve."""
    if time_limit is None:
        return None
    seconds = parse_duration(time_limit, "--time-limit")
    if seconds <= TIME_LIMIT_RESERVE_S:
        raise UserInputError(f"--time-limit {time_limit}: must be more than the {TIME_LIMIT_RESERVE_S:.0f} s wf keeps "
                             "back to save the run and exit.")
    return time.monotonic() + seconds - TIME_LIMIT_RESERVE_S
