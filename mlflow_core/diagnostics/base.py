"""What a diagnostic is and what it returns. A diagnostic is one module (diagnostics/<name>.py, torch-free
at import) that declares a `Diagnostic`, plus its playbook (diagnostics/<name>.md, content) and, where
its probes deserve a section of the report, templates/reports/diagnostics/<name>.md.j2. Detectors
return findings; they never act: the engine runs fix trials and writes the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis

PROBE_SAMPLES = 256  # training samples the activation probes (diagnostics/dynamics.py) look at


def default_trial_steps(ctx: DiagnoseContext) -> int:
    """As long as the run itself, within 100–300 steps."""
    return min(max(ctx.metrics.steps, 100), 300)


@dataclass(frozen=True)
class TrialPlan:
    """How a short trial run judges a fix (diagnostics/trials.py): the symptom is gone when every loss is
    finite and the loss fell, by at least `min_drop`; `judge` (built per run) must also pass on the
    trained model; with `reference`, the unchanged config trains as long, and the fix must train at
    least as well."""
    min_drop: float = 0.0
    judge: Callable[[DiagnoseContext], Callable[[Any], tuple[bool, dict[str, Any]]]] | None = None
    reference: bool = False
    steps: Callable[[DiagnoseContext], int] = default_trial_steps


def _always(_ctx: DiagnoseContext) -> bool:
    return True


@dataclass(frozen=True)
class Diagnostic:
    name: str
    detect: Callable[[DiagnoseContext], Diagnosis]
    # the config changes a short trial can verify for the diagnosis, least invasive first
    fixes: Callable[[Diagnosis, DiagnoseContext], list[dict[str, Any]]] | None = None
    trial: TrialPlan = field(default_factory=TrialPlan)
    applies: Callable[[DiagnoseContext], bool] = _always  # whether `wf diagnose auto` runs it on this run
    claims_fixes: bool = False  # when it applies, `auto --fix` tries its fixes, not the strongest finding's
    # the smallest effect it can see, where that does not depend on the run's data (a detector whose
    # sensitivity does, e.g. on the number of validation samples, sets Diagnosis.sensitivity itself)
    sees: str = ""

    @property
    def summary(self) -> str:
        """What it finds, in a few words (`wf diagnose --help`), from the catalog."""
        from mlflow_core.diagnostics.catalog import SUMMARIES

        return SUMMARIES[self.name]
