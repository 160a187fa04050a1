"""Every diagnostic `wf diagnose NAME` runs, in the order `wf diagnose auto` runs them (on equal
confidence an earlier one's finding ranks first). A new diagnostic is a module declaring DIAGNOSTIC,
one line here, and its playbook diagnostics/<name>.md."""

from __future__ import annotations

from mlflow_core.diagnostics import (
    bad_initialization,
    class_imbalance,
    convergence_stall,
    data_leakage,
    dead_relu,
    exploding_gradients,
    input_scaling,
    nan_loss,
    overfitting,
    resource_inefficiency,
    underfitting,
    vanishing_gradients,
)
from mlflow_core.diagnostics.base import Diagnostic

REGISTRY: dict[str, Diagnostic] = {module.DIAGNOSTIC.name: module.DIAGNOSTIC for module in (
    nan_loss,
    data_leakage,
    class_imbalance,
    input_scaling,
    overfitting,
    resource_inefficiency,
    bad_initialization,
    exploding_gradients,
    vanishing_gradients,
    dead_relu,
    convergence_stall,
    underfitting,
)}
DIAGNOSTICS = tuple(REGISTRY)
