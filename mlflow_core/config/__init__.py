"""The training config. Exports resolve lazily: building the pydantic schema costs tens of
milliseconds, which commands that never read a config should not pay."""

from __future__ import annotations

from typing import Any

CONFIG_FILENAME = "training_config.yaml"

_EXPORTS = {"load_config": "loader", "load_config_text": "loader", "config_sha256": "loader",
            "WorkflowConfig": "schema", "with_changes": "schema"}
__all__ = ["CONFIG_FILENAME", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"mlflow_core.config.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mlflow_core.config' has no attribute {name!r}")
