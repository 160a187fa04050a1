"""Phase definitions (`phases/<name>.yaml`): content that people read and the engine executes."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlflow_core.content import content_path
from mlflow_core.errors import UserInputError

PHASE_ORDER = ("setup", "baseline", "diagnostics", "optimization", "finalization")
# The phases whose runner ships in this release (mlflow_core/runners); the others are defined as content.
RUNNABLE_PHASES = ("setup", "baseline", "diagnostics", "optimization", "finalization")
# setup and diagnostics hold no training state worth continuing: running them again is their resume
RESUMABLE_PHASES = ("baseline", "optimization", "finalization")

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
        raise UserInputError(f"unknown phase {name!r}; phases are: {', '.join(PHASE_ORDER)}.")
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
