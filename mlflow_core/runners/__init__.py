"""Phase runners: the torch side of each phase. The engine (workflow/engine.py) imports them lazily,
so that commands which do not train never import torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_core.workflow.phases import RUNNABLE_PHASES  # noqa: F401  (re-exported)
from mlflow_core.workflow.project import Project

if TYPE_CHECKING:
    from mlflow_core.config.schema import WorkflowConfig


@dataclass
class RunContext:
    project: Project
    cfg: WorkflowConfig
    config_sha256: str
    run_id: str
    run_dir: Path
    on_progress: Callable[[Any], None] = lambda _p: None
    on_message: Callable[[str], None] = lambda _m: None
    resume_from: Path | None = None  # checkpoints/resume.pt of the interrupted run being continued


@dataclass
class RunOutput:
    status: str  # completed, early_stopped, failed_nan, failed_checks
    facts: dict[str, Any]
    metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # recorded in the history


def get_runner(phase: str) -> Callable[[RunContext], RunOutput] | None:
    if phase == "setup":
        from mlflow_core.runners.setup import run_setup
        return run_setup
    if phase == "baseline":
        from mlflow_core.runners.baseline import run_baseline
        return run_baseline
    if phase == "diagnostics":
        from mlflow_core.runners.diagnostics import run_diagnostics
        return run_diagnostics
    if phase == "optimization":
        from mlflow_core.runners.optimization import run_optimization
        return run_optimization
    if phase == "finalization":
        from mlflow_core.runners.finalization import run_finalization
        return run_finalization
    return None

