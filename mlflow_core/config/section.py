"""The base of every config section: unknown keys are errors (a misspelling is never a silently
ignored setting), defaults are validated."""

from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


MAX_INT = 2**31 - 1  # no count, size or seed of a config is larger: 10**40 epochs is a typo, not a plan


class Section(BaseModel):
    # defer_build: each section is built once, inside the WorkflowConfig schema, not also on its own;
    # allow_inf_nan=False: no setting is infinite or NaN (a learning rate of .inf trains nothing)
    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _not_absurd(cls, value: Any) -> Any:
        """Every whole number of every section within ±MAX_INT (lists of them too); a field's own
        bounds say more where it has them."""
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
                raise ValueError(f"beyond any sensible value (at most {MAX_INT:,})")
        return value


def check_target(value: str | None) -> str | None:
    if value is not None and not IMPORT_PATH.match(value):
        raise ValueError(f"must look like 'module:attribute' (e.g. 'my_data:build'), got {value!r}")
    if value is not None and standard_library(value.split(":", 1)[0]):
        raise ValueError(f"{value!r} is in Python's standard library, not the project's code: a target names a class "
                         "or factory in a .py file of the project (or an installed package)")
    return value


def standard_library(module: str) -> bool:
    """Whether `module` is Python's own (a builtin or the standard library)."""
    top = module.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins"
