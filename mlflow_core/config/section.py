"""The base of every config section: unknown keys are errors (a misspelling is never a silently
ignored setting), defaults are validated."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class Section(BaseModel):
    # defer_build: each section is built once, inside the WorkflowConfig schema, not also on its own
    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True)


def check_target(value: str | None) -> str | None:
    if value is not None and not IMPORT_PATH.match(value):
        raise ValueError(f"must look like 'module:attribute' (e.g. 'my_data:build'), got {value!r}")
    return value
