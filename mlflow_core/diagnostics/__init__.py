"""Phase 3 diagnostics: one module per diagnostic (diagnostics/<name>.py), each declaring a
`Diagnostic` (base.py) named in catalog.py; the active probes they share (dynamics.py, probes.py) and
fix trials (trials.py); the engine that runs them (engine.py). Importing this package imports nothing
else (the catalog's names are read by the torch-free commands), and needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DIAGNOSTICS", "Diagnosis", "Diagnostic", "Finding"]
_FROM = {"DIAGNOSTICS": "catalog", "Diagnostic": "base", "Diagnosis": "findings", "Finding": "findings"}


def __getattr__(name: str) -> Any:
    if name in _FROM:
        module = importlib.import_module(f"mlflow_core.diagnostics.{_FROM[name]}")
        return module.NAMES if name == "DIAGNOSTICS" else getattr(module, name)
    raise AttributeError(name)
