"""Phase definitions (`phases/<name>.yaml`): content that people read and the engine executes."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlflow_core.content import content_path
from mlflow_core.errors import UserInputError, did_you_mean
from mlflow_core.world import world_from_env


@dataclass(frozen=True)
class PhaseKind:
    """What the engine knows about a phase besides its definition (phases/<name>.yaml, which people
    read and may edit): the functions that run it and render its report, named as "module:function"
    and imported only when needed (runners import torch; `wf status` must not), the model of the
    facts it records as evidence (workflow/facts/, named like the functions, so that a command reading
    no evidence builds no model), and whether it can be resumed, trained data-parallel,
    or smoke-tested. A new phase is a runner, a facts model, a definition and one line in PHASES."""
    name: str
    runner: str
    report: str
    facts_model: str  # "module:Class" of its PhaseFacts model
    resumable: bool = False  # it holds training state worth continuing; otherwise running it again is its resume
    distributed: bool = False  # its training runs are data-parallel under a DDP launcher
    smokable: bool = False  # it trains, so `--smoke` can check that its config runs
    publish: str | None = None  # puts what the run found in place before its criteria are judged

    @property
    def facts(self) -> Any:
        """The phase's PhaseFacts model (its module imported on first use)."""
        return _resolve(self.facts_model)

    @property
    def facts_name(self) -> str:
        return self.facts_model.rpartition(":")[2]

    def run(self) -> Callable[..., Any]:
        return _resolve(self.runner)

    def publisher(self) -> Callable[..., Any] | None:
        return _resolve(self.publish) if self.publish else None

    def render(self) -> Callable[..., Any]:
        return _resolve(self.report)


def _resolve(dotted: str) -> Callable[..., Any]:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


_REPORTS = "mlflow_core.reports.phase_reports"
_FACTS = "mlflow_core.workflow.facts"
# the phases in their order
PHASES: dict[str, PhaseKind] = {kind.name: kind for kind in (
    PhaseKind("setup", "mlflow_core.runners.setup:run_setup", f"{_REPORTS}:render_setup", f"{_FACTS}.setup:SetupFacts",
              smokable=True, publish=f"{_REPORTS}:publish_setup"),
    PhaseKind("baseline", "mlflow_core.runners.baseline:run_baseline", f"{_REPORTS}:render_training",
              f"{_FACTS}.training:TrainingFacts", resumable=True, distributed=True, smokable=True),
    PhaseKind("diagnostics", "mlflow_core.runners.diagnostics:run_diagnostics", f"{_REPORTS}:render_diagnostics",
              f"{_FACTS}.diagnostics:DiagnosticsFacts"),
    PhaseKind("optimization", "mlflow_core.runners.optimization:run_optimization", f"{_REPORTS}:render_optimization",
              f"{_FACTS}.optimization:OptimizationFacts", resumable=True, distributed=True, smokable=True),
    PhaseKind("finalization", "mlflow_core.runners.finalization:run_finalization", f"{_REPORTS}:render_finalization",
              f"{_FACTS}.finalization:FinalizationFacts", resumable=True, distributed=True, smokable=True),
)}
PHASE_ORDER = tuple(PHASES)
RESUMABLE_PHASES = tuple(k.name for k in PHASES.values() if k.resumable)
DISTRIBUTED_PHASES = tuple(k.name for k in PHASES.values() if k.distributed)
SMOKABLE_PHASES = tuple(k.name for k in PHASES.values() if k.smokable)

def resume_command(phase: str) -> str:
    """How to continue an interrupted run of `phase`: under DDP, with as many processes (a resume
    restores each rank's RNG and data position, so it refuses another count)."""
    world = world_from_env()
    command = f"`wf phase {phase} --resume`"
    return command if world is None else f"{command} with the same {world.world_size} processes"


def continue_command(phase: str) -> str:
    """How to go on after a run of `phase` stopped: `--resume` where the phase holds training state
    (a baseline stopped before its first resume point starts again from step 0), else the phase again."""
    return resume_command(phase) if phase in RESUMABLE_PHASES else f"`wf phase {phase}`"


# `wf decide VERB` names the phase to go to next.
DECISIONS = {"finalize": "finalization", "diagnose": "diagnostics", "optimize": "optimization",
             "rebaseline": "baseline"}


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    text: str
    check: str
    params: dict[str, Any] = Field(default_factory=dict)


class RequiredItem(BaseModel):
    """An item the phase's exit gate requires, whatever the project's checklist says."""
    model_config = ConfigDict(extra="forbid")
    id: str
    text: str
    check: str | None = None  # the engine check that verifies it; None: a person ticks it


class PhaseDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    number: int
    title: str
    purpose: str
    objectives: list[str]
    exit_checklist: str
    next: list[str]
    report: str
    success_criteria: list[Criterion] = Field(default_factory=list)
    playbooks: dict[str, str] = Field(default_factory=dict)
    # For some transitions only part of the exit checklist applies: {next phase: [item ids]}.
    exit_items_for: dict[str, list[str]] = Field(default_factory=dict)
    # The gate's required items: a checklist may reword, reorder and add to them, but one that is
    # missing (or verified by another check, or turned into a manual tick) keeps the gate closed
    # until it is restored or waived on the record (`wf checklist waive`).
    required_items: list[RequiredItem] = Field(default_factory=list)


def load_phase(name: str, project_root: Path | None = None) -> PhaseDefinition:
    if name not in PHASE_ORDER:
        raise UserInputError(f"unknown phase {name!r}; phases are: {', '.join(PHASE_ORDER)}."
                             + did_you_mean(name, PHASE_ORDER))
    path = content_path("phases", f"{name}.yaml", project_root)
    return _load_phase_file(path, path.stat().st_mtime_ns)


@cache
def _load_phase_file(path: Path, _mtime: int) -> PhaseDefinition:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return PhaseDefinition.model_validate(raw)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserInputError(f"{path}: {problems}") from None


def required_items(name: str, project_root: Path | None = None) -> list[RequiredItem]:
    """The packaged definition's required items, and any a project's own copy of the definition
    adds: a project can require more, never less (dropping one is `wf checklist waive`, recorded)."""
    items = {i.id: i for i in load_phase(name).required_items}
    if project_root is not None:
        for item in load_phase(name, project_root).required_items:
            items.setdefault(item.id, item)
    return list(items.values())


def predecessors(name: str, project_root: Path | None = None) -> list[str]:
    return [p for p in PHASE_ORDER if name in load_phase(p, project_root).next]


def phase_gated_by(checklist_name: str, project_root: Path) -> str | None:
    """The phase whose exit gate is the checklist `checklist_name`, if any."""
    return next((p for p in PHASE_ORDER if load_phase(p, project_root).exit_checklist == checklist_name), None)
