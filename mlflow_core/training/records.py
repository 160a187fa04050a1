"""What a run records about itself in metrics.json, and the small conversions it needs."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from mlflow_core.workflow.records import METRICS_SCHEMA_VERSION

__all__ = ["METRICS_SCHEMA_VERSION", "architecture_summary", "finite_or_str"]


ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
               "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Softplus", "Softsign", "LogSigmoid")
NORMALIZATIONS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
                  "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm", "RMSNorm")


def finite_or_str(value: float) -> float | str:
    """JSON has no NaN/Inf: keep them readable as strings."""
    return value if math.isfinite(value) else str(value)


def architecture_summary(model: nn.Module) -> dict[str, Any]:
    """Activation and normalisation modules by type, and the weight layers' count: what the
    gradient diagnostics reason about (functional activations in a custom forward are not seen)."""
    activations: dict[str, int] = {}
    norms: dict[str, int] = {}
    for module in model.modules():
        kind = type(module).__name__
        for table, kinds in ((activations, ACTIVATIONS), (norms, NORMALIZATIONS)):
            if kind in kinds:
                table[kind] = table.get(kind, 0) + 1
    weight_layers = sum(1 for p in model.parameters() if p.ndim >= 2)
    return {"activations": activations, "normalization": norms, "weight_layers": weight_layers}
