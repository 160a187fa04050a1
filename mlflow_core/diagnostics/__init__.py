"""Phase 3 diagnostics: one module per diagnostic (diagnostics/<name>.py), each declaring a
`Diagnostic` (base.py) listed in registry.py; the active probes they share (dynamics.py, probes.py) and
fix trials (trials.py); the engine that runs them (engine.py). Importing this package needs no torch.
"""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.findings import Diagnosis, Finding

__all__ = ["DIAGNOSTICS", "Diagnosis", "Diagnostic", "Finding"]


def __getattr__(name: str) -> Any:
    # the registry imports every diagnostic module, which import Finding from here: loaded on first use
    if name == "DIAGNOSTICS":
        from mlflow_core.diagnostics.registry import DIAGNOSTICS
        return DIAGNOSTICS
    raise AttributeError(name)
