"""`wf data pack`: each split of the project's NPZ folder, ImageFolder or CSV images as packed,
memory-mapped arrays (workflow/packs.py), under the project lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow_core.config.loader import load_config
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.packs import pack_project_data
from mlflow_core.workflow.project import Project


def pack_data(project: Project, on_message: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], str]:
    """What each split's pack holds, and data.pack (whether training reads them)."""
    cfg = load_config(project.config_path)  # bad config: exit 2 before the lock is asked for
    return _pack(project, cfg, on_message), cfg.data.pack


@locked("wf data pack")
def _pack(project: Project, cfg: Any, on_message: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    if cfg.data.source in ("imagefolder", "csv"):  # images are decoded by torchvision: only then is torch loaded
        from mlflow_core.training.data.sources import pack_data as pack_images

        return pack_images(cfg, project.root, on_message)
    return pack_project_data(cfg, project.root, on_message)
