"""Every diagnostic, imported: its module's DIAGNOSTIC for each name of the catalog (catalog.py), in
the catalog's order, the order `wf diagnose auto` runs them. Imported only where diagnostics run;
what merely names them (`wf diagnose --help`, the torch-free commands) reads the catalog."""

from __future__ import annotations

import importlib

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.catalog import NAMES

REGISTRY: dict[str, Diagnostic] = {
    name: importlib.import_module(f"mlflow_core.diagnostics.{name}").DIAGNOSTIC for name in NAMES}
DIAGNOSTICS = NAMES
