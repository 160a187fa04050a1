"""What a diagnostic reads: the run, its recorded evidence, setup's data facts, and probes and other
diagnostics' results computed once and shared."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.diagnostics.findings import Diagnosis
from mlflow_core.workflow.facts import DataCheck
from mlflow_core.workflow.records import RunMetrics

if TYPE_CHECKING:
    from mlflow_core.workflow.state import RunRecord


@dataclass
class DiagnoseContext:
    project_root: Path
    run: RunRecord
    run_dir: Path
    metrics: RunMetrics  # the run's logs/metrics.json
    setup_data: DataCheck | None  # setup's data facts (.wf/evidence/setup.json); None if setup never ran
    detectors: dict[str, Callable[[DiagnoseContext], Diagnosis]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # probes and results shared by detectors
    say: Callable[[str], None] = field(default=lambda _m: None)  # progress messages for the person waiting

    def result(self, name: str) -> Diagnosis:
        """Another detector's diagnosis of this run, computed once."""
        key = f"diagnosis:{name}"
        if key not in self.cache:
            self.cache[key] = self.detectors[name](self)
        return self.cache[key]

    def run_config(self) -> Any:
        """The run's own resolved config (as it trained), not today's training_config.yaml."""
        if "config" not in self.cache:
            self.cache["config"] = WorkflowConfig.model_validate(self.metrics.config)
        return self.cache["config"]

    def data(self) -> Any:
        if "data" not in self.cache:
            # torch: only probes need the data; the registry stays torch-free
            from mlflow_core.training.augment import with_augmentation
            from mlflow_core.training.data.sources import build_data
            self.cache["data"] = with_augmentation(build_data(self.run_config(), self.project_root),
                                                   self.run_config().augmentation)
        return self.cache["data"]

    def steps(self) -> list[dict[str, float]]:
        """The rows of logs/steps.csv (read once): step, epoch, loss, grad_norm, lr as numbers; rows
        that do not parse are left out."""
        if "steps" not in self.cache:
            import csv
            rows: list[dict[str, float]] = []
            try:
                with (self.run_dir / "logs" / "steps.csv").open(encoding="utf-8") as f:
                    for row in csv.DictReader(f):
                        try:
                            rows.append({k: float(v) for k, v in row.items() if k is not None})
                        except (TypeError, ValueError):
                            continue
            except OSError:
                pass
            self.cache["steps"] = rows
        return self.cache["steps"]

    def step_losses(self, finite: bool = True) -> list[float]:
        """The per-step training losses of logs/steps.csv, finite ones only by default."""
        losses = [r["loss"] for r in self.steps() if "loss" in r]
        return [v for v in losses if math.isfinite(v)] if finite else losses


def needs_setup_data(detector: Callable[[DiagnoseContext, DataCheck], Diagnosis]
                     ) -> Callable[[DiagnoseContext], Diagnosis]:
    """For detectors that read setup's data facts: without them, no finding and what to run."""
    name = detector.__name__

    @functools.wraps(detector)
    def wrapped(ctx: DiagnoseContext) -> Diagnosis:
        data = ctx.setup_data
        if data is None:
            return Diagnosis(name, ctx.run.run_id, [], probes={
                "note": "no data facts recorded: run `wf phase setup`, which scans the data, then diagnose again"})
        return detector(ctx, data)
    return wrapped


def fmt_value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def number_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
