"""`wf lr-find`: the learning-rate range test on the project's config and data, under the project's
lock, with its picture in reports/figures/."""

from __future__ import annotations

from typing import Any

from mlflow_core.config.loader import load_config
from mlflow_core.reports.plots import lr_range_figure
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.lr_finder import lr_range_test
from mlflow_core.workflow.lock import locked


@locked("wf lr-find")
def find_lr(project: Any, *, start_lr: float, end_lr: float, steps: int) -> dict[str, Any]:
    """`wf lr-find`: the range test on the project's config and data, with its picture in reports/figures/."""
    cfg = load_config(project.config_path)
    result = lr_range_test(cfg, project.root, build_data(cfg, project.root), start_lr=start_lr, end_lr=end_lr,
                           steps=steps)
    result["configured_lr"] = cfg.training.learning_rate
    figure = lr_range_figure(result, project.reports_dir / "figures", "lr_find.png")
    result["figure"] = f"reports/{figure['file']}" if figure else None
    return result
