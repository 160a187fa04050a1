"""Which precision a run trains in, decided before training.

On a GPU the configured `training.precision` is what runs. On a CPU, fp16 and bf16 autocast are only
fast where the processor computes them natively (AVX-512 BF16, AMX, Arm's FEAT_BF16 …); elsewhere
torch converts every operand to and from fp32 and a convolution step runs 10-25x slower than plain
fp32. A full run then trains as configured, after saying so with the slow-down measured on this CPU;
a short check (`--smoke`, setup's reproducibility steps) trains in fp32 instead, because it exists to
show that the pipeline runs, not to wait for emulated arithmetic. `plan_precision` only decides; the
trainer acts on the plan and records it, the way a failed torch.compile falls back to eager.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from mlflow_core.environment import NATIVE_CPU_FLAGS, cpu_precision_support

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str  # training.precision as configured
    mode: str  # what trains: the requested precision, or fp32 for a short check on an emulating CPU
    native: bool | None  # does the CPU compute `requested` natively (None: not a CPU run, or unknown)
    slowdown: float | None  # measured autocast step time / fp32 step time on this CPU, when emulated
    note: str | None  # said before training and recorded with the run's precision

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.mode)

    @property
    def fell_back(self) -> bool:
        return self.mode != self.requested

    def as_record(self) -> dict[str, object]:
        return {"mode": self.mode, "requested": self.requested, "cpu_native": self.native,
                "cpu_slowdown": self.slowdown, "note": self.note}


def plan_precision(requested: str, device_type: str, *, short_check: bool,
                   native: dict[str, bool | None] | None = None) -> PrecisionPlan:
    """The precision to train in. `native` is cpu_precision_support()'s answer (read when not given)."""
    if requested == "fp32" or device_type != "cpu":
        return PrecisionPlan(requested, requested, None, None, None)
    support = native if native is not None else cpu_precision_support()
    is_native = support.get(requested)
    if is_native or is_native is None:  # native, or nothing to go by: train as configured, silently
        return PrecisionPlan(requested, requested, is_native, None, None)
    slowdown = measure_autocast_slowdown(requested)
    why = (f"training.precision {requested} on a CPU without native {requested} arithmetic "
           f"(none of the CPU flags {', '.join(NATIVE_CPU_FLAGS[requested])}): autocast emulates it, and "
           f"a convolution step ran {slowdown:.0f}x slower than in fp32 on this CPU just now (more on "
           "larger images)")
    if short_check:
        return PrecisionPlan(requested, "fp32", False, slowdown,
                             f"{why}. This short check trains in fp32 instead; the config is unchanged, "
                             f"and a full run on this CPU trains in {requested} as configured.")
    return PrecisionPlan(requested, requested, False, slowdown,
                         f"{why}. Training goes on in {requested} as configured; on a CPU, "
                         "`training.precision: fp32` is the fast choice.")


@functools.cache
def measure_autocast_slowdown(kind: str, repeats: int = 3) -> float:
    """Step time of a convolution block (forward and backward, 2×16×64×64) under CPU autocast in
    `kind`, over the same step in fp32: the best of `repeats` each, about 0.4 s on a CPU that
    emulates. Larger images slow down more (bench/cpu_precision.py: 22-27x at 64-256 px against 15x
    here), tiny ones less. It draws from its own generator: a seeded run's random stream is untouched."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, 64, generator=gen)
    w1 = torch.randn(16, 16, 3, 3, generator=gen).mul_(0.1).requires_grad_()
    w2 = torch.randn(16, 16, 3, 3, generator=gen).mul_(0.1).requires_grad_()

    def step(dtype: torch.dtype | None) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            hidden = torch.relu(torch.nn.functional.conv2d(x, w1, padding=1))
            y = torch.nn.functional.conv2d(hidden, w2, padding=1)
        y.float().square().mean().backward()
        return time.perf_counter() - started

    def best(dtype: torch.dtype | None) -> float:
        step(dtype)  # the first call pays for kernel selection
        return min(step(dtype) for _ in range(repeats))

    return max(1.0, best(AMP_DTYPES[kind]) / best(None))
