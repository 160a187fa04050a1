"""Which precision a run trains in, decided before training.

On a GPU the configured `training.precision` is what runs. On a CPU, fp16 and bf16 autocast are only
fast where torch's kernels compute them natively (AVX-512 BF16, AMX, Arm's FEAT_BF16 …); elsewhere
torch converts every operand to and from fp32 and a convolution step runs 10-140x slower than plain
fp32. Whether it does is measured (a fraction of a second, once per process), not read from CPU
flags. A full run then trains as configured, after saying so with the slow-down measured on this CPU;
a short check (`--smoke`, setup's reproducibility steps) trains in fp32 instead, because it exists to
show that the pipeline runs, not to wait for emulated arithmetic. `plan_precision` only decides; the
trainer acts on the plan and records it, the way a failed torch.compile falls back to eager.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlflow_core.environment import NATIVE_CPU_FLAGS, cpu_precision_support, measure_autocast_slowdown

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


EMULATED_SLOWDOWN = 3.0  # autocast this many times slower than fp32: the CPU does not compute it natively


def plan_precision(requested: str, device_type: str, *, short_check: bool,
                   native: dict[str, bool | None] | None = None, slowdown: float | None = None) -> PrecisionPlan:
    """The precision to train in. `native` is cpu_precision_support()'s answer and `slowdown`
    measure_autocast_slowdown()'s (each read when not given). The measurement decides: a CPU flag
    says what the processor can do, not whether torch's CPU kernels use it (a CPU with AVX512-FP16
    ran fp16 autocast 137x slower than fp32 under torch 2.14, bf16 at par beside it)."""
    if requested == "fp32" or device_type != "cpu":
        return PrecisionPlan(requested, requested, None, None, None)
    flagged = (native if native is not None else cpu_precision_support()).get(requested)
    measured = slowdown if slowdown is not None else measure_autocast_slowdown(requested)
    if measured < EMULATED_SLOWDOWN:  # computed natively: train as configured, silently
        return PrecisionPlan(requested, requested, True, None, None)
    flags = ", ".join(NATIVE_CPU_FLAGS[requested])
    cause = (f"a CPU that reports native {requested} (one of the flags {flags}), but torch's CPU kernels do not "
             "compute it natively here" if flagged else
             f"a CPU without native {requested} arithmetic (none of the CPU flags {flags})")
    why = (f"training.precision {requested} on {cause}: a convolution step under autocast ran {measured:.0f}x "
           "slower than in fp32 on this CPU just now (more on larger images)")
    if short_check:
        return PrecisionPlan(requested, "fp32", False, measured,
                             f"{why}. This short check trains in fp32 instead; the config is unchanged, "
                             f"and a full run on this CPU trains in {requested} as configured.")
    return PrecisionPlan(requested, requested, False, measured,
                         f"{why}. Training goes on in {requested} as configured; on a CPU, "
                         "`training.precision: fp32` is the fast choice.")
