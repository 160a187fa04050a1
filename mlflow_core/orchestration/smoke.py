"""`wf phase NAME --smoke`: the phase's whole pipeline (data, model, every training run, validation,
checkpoints, trials, comparison, exports), each run capped at two training and two validation steps
and one epoch, in a throwaway directory. Nothing is recorded: no state, evidence, report or checklist
mark changes, so CI and users can check that a config still runs at any time, even mid-run (no lock)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_core.config.loader import config_sha256, load_config
from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.errors import UserInputError
from mlflow_core.orchestration.launch import leading
from mlflow_core.orchestration.preflight import missing_training_stack
from mlflow_core.runners import RunContext, run_runner
from mlflow_core.workflow.phases import DISTRIBUTED_PHASES, SMOKABLE_PHASES
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import load_run_metrics
from mlflow_core.world import world_from_env

PASSING = ("completed", "early_stopped", "pruned")


@dataclass
class SmokeResult:
    phase: str
    status: str
    passed: bool
    duration_s: float
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per training run of the phase


def smoke_config(cfg: WorkflowConfig) -> WorkflowConfig:
    """One epoch everywhere (one per curriculum stage, so that every transition runs), one trial, the
    fewest seeds: the shape of the phase, not its length. A data pack is read when a current one
    exists and never built (data.pack on reads as auto): a smoke run writes nothing into the project."""
    epochs = max(1, len(cfg.curriculum.stages))
    return with_changes(cfg, {"training.epochs": epochs, "optimization.n_trials": 1,
                              "optimization.trial_epochs": epochs, "optimization.seeds": 2,
                              "optimization.timeout_s": None, "finalization.seeds": 1, "finalization.epochs": epochs,
                              "data.pack": "auto" if cfg.data.pack == "on" else cfg.data.pack})


def smoke_phase(project: Project, phase: str, *, on_progress: Callable[[Any], None] | None = None,
                on_message: Callable[[str], None] | None = None) -> SmokeResult:
    """Under a DDP launcher this is rank 0; the other ranks follow it (launch.follow)."""

    world = world_from_env()
    if world is None:
        return _smoke_phase(project, phase, on_progress, on_message)
    with leading(world, project.config_path) as announce:
        if phase not in DISTRIBUTED_PHASES:
            raise UserInputError(f"`wf phase {phase} --smoke` runs in one process; data-parallel phases: "
                                 f"{', '.join(DISTRIBUTED_PHASES)}.")
        return _smoke_phase(project, phase, on_progress, on_message, world, announce)


def _smoke_phase(project: Project, phase: str, on_progress: Callable[[Any], None] | None,
                 on_message: Callable[[str], None] | None, world: Any = None, announce: Any = None) -> SmokeResult:

    if phase not in SMOKABLE_PHASES:
        raise UserInputError(f"`wf phase {phase} --smoke` is not available: {phase} analyses a recorded run "
                             f"rather than training one; smoke-testable phases: {', '.join(SMOKABLE_PHASES)}.",
                             hint="`wf diagnose auto` is the quick form of diagnostics." if phase == "diagnostics"
                             else None)
    cfg = smoke_config(load_config(project.config_path))  # bad config: exit 2, as for a real run
    missing = missing_training_stack()
    if missing:
        raise UserInputError(f"`wf phase {phase} --smoke` needs the training stack, and {', '.join(missing)} is "
                             "not installed.", hint="Install it with `pip install 'wf-phases[train]'`.")
    say = on_message or (lambda _m: None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"wf-smoke-{phase}-") as tmp:
        run_dir = Path(tmp) / f"{phase}-smoke"
        (run_dir / "logs").mkdir(parents=True)
        say(f"smoke run of {phase} in {run_dir} (removed afterwards; nothing is recorded)")
        ctx = RunContext(project, cfg, config_sha256(project.config_path), f"{phase}-smoke", run_dir,
                         on_progress or (lambda _p: None), say, smoke=True, world=world,
                         announce=announce or (lambda _plan: None))
        output = run_runner(phase, ctx)
        runs = _runs(run_dir)
    passed = output.status in PASSING and all(r["status"] in PASSING for r in runs)
    return SmokeResult(phase, output.status, passed, round(time.perf_counter() - started, 2), runs)


def _runs(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(run_dir.rglob("logs/metrics.json")):
        m = load_run_metrics(path)
        last = m.epochs[-1] if m.epochs else None
        out.append({"run": str(path.parent.parent.relative_to(run_dir)) if path.parent.parent != run_dir else ".",
                    "status": m.status, "steps": m.steps, "train_loss": last.train_loss if last else None,
                    "val_loss": last.val_loss if last else None, "stop_reason": m.stop_reason,
                    "precision": m.precision.mode if m.precision else ""})
    return out
