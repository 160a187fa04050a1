"""A wf project on disk: what people write, apart from what the machine writes.

People write:   training_config.yaml, checklists/*.md (and optional phases/, templates/ overrides)
wf writes:      .wf/state.json, .wf/evidence/*.json (small, committed), reports/ (committed),
                runs/<run-id>/ (checkpoints ignored by git, logs and metrics small)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_core.config import CONFIG_FILENAME
from mlflow_core.errors import NotAProjectError, UserInputError

WF_DIR = ".wf"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(value: str, what: str) -> str:
    """A name that becomes part of a path (checklist, phase, run id) must not escape the project."""
    if not _SAFE_NAME.match(value) or ".." in value:
        raise UserInputError(f"{what} {value!r} is not a valid name (letters, digits, '_', '-', '.').")
    return value


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def find(cls, start: str | os.PathLike | None = None) -> Project:
        """The project containing `start` (default: the current directory), like git finds a repo."""
        here = Path(start or os.getcwd()).resolve()
        for candidate in (here, *here.parents):
            if (candidate / WF_DIR / "state.json").is_file():
                return cls(candidate)
        raise NotAProjectError(f"{here} is not inside a wf project (no {WF_DIR}/state.json found).",
                               hint="Create one with `wf init DIR` or `wf quickstart DIR`.")

    @property
    def wf_dir(self) -> Path:
        return self.root / WF_DIR

    @property
    def state_path(self) -> Path:
        return self.wf_dir / "state.json"

    @property
    def lock_path(self) -> Path:
        return self.wf_dir / "lock"

    @property
    def evidence_dir(self) -> Path:
        return self.wf_dir / "evidence"

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILENAME

    @property
    def checklists_dir(self) -> Path:
        return self.root / "checklists"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def checklist_path(self, name: str) -> Path:
        return self.checklists_dir / f"{safe_name(name, 'checklist')}.md"

    def inside(self, path: str | os.PathLike) -> Path:
        """Resolve `path` relative to the project and refuse anything outside it."""
        resolved = (self.root / path).resolve()
        if resolved != self.root.resolve() and self.root.resolve() not in resolved.parents:
            raise UserInputError(f"{path} points outside the project {self.root}.")
        return resolved

    def relative(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)
