"""The base of every phase's facts: a file reference, the fingerprints a gate vouches for, and
what every phase's evidence carries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Facts(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class FileRef(Facts):
    """A file wf wrote (a report, a config, a log), named by its path in the project and its digest:
    what a check verifies to see that nobody edited it."""
    path: str
    sha256: str


class Fingerprints(Facts):
    """What the gate vouches for (fingerprints.py compares them): the config, the data, the code and
    the packages as the phase ran, and the configs it approves besides its own."""
    config: dict[str, Any]
    data: dict[str, Any] | None
    code: dict[str, Any]
    packages: dict[str, Any]
    approves: list[dict[str, Any]] = []

    def approved_configs(self) -> list[dict[str, Any]]:
        return [c for c in [self.config, *self.approves] if c]


class PhaseFacts(Facts):
    """What every phase's evidence carries besides its own facts: written by the engine."""
    fingerprints: Fingerprints | None = None
    report: FileRef | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with the keys the runner set (an absent key stays absent: templates test
        `is defined`)."""
        return self.model_dump(mode="json", exclude_unset=True)
