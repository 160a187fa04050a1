"""What a phase needs before it writes anything: packages that fit together, and the project's own
model and data code importable. A problem here is bad input (exit 2) with the fix, found before the
run record, the reports or the evidence are touched."""

from __future__ import annotations

from typing import Any

from mlflow_core.environment import torch_pair_problem
from mlflow_core.errors import UserInputError
from mlflow_core.workflow.project import Project


def preflight(project: Project, cfg: Any, phase: str) -> None:
    """Refuse, before anything is written, what would fail the run at its start."""
    problem = torch_pair_problem(load_ops=phase == "setup")
    if problem:
        raise UserInputError(f"`wf phase {phase}`: {problem}; nothing was changed.")
    if cfg.monitoring.mlflow:
        from mlflow_core.monitoring.mlflow_runs import require_system_metrics, system_metrics_asked
        from mlflow_core.monitoring.mlflow_store import require_mlflow

        require_mlflow()
        if system_metrics_asked(cfg.monitoring):
            require_system_metrics()
    from mlflow_core.training.data.sources import (
        import_target,  # the project's code, imported as the run will
    )

    for field, target, used in (("model.target", cfg.model.target, cfg.model.name == "custom"),
                                ("data.target", cfg.data.target, cfg.data.source == "custom")):
        if used:
            try:
                import_target(target, project.root, field)
            except UserInputError as exc:
                raise UserInputError(f"{project.relative(project.config_path)}: {exc.message}; nothing was changed.",
                                     hint=f"Fix {field} (a 'module:name' in a .py file of the project, or an "
                                          "installed package), then run the command again.") from None


def missing_training_stack() -> list[str]:
    """The packages of the `train` extra that cannot be imported (found without importing them)."""
    import importlib.util

    missing = []
    for module in ("torch", "torchvision"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ValueError, ImportError):
            found = False
        if not found:
            missing.append(module)
    return missing
