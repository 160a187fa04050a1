"""Counting the reads of tensor values back to the host: on an accelerator each one waits for the device
to finish everything queued before it, so a read per step stalls every step. Counted on any device,
the CPU included, which is how the tests hold the trainer to none between its monitoring windows.

A read is `aten._local_scalar_dense` (what `.item()`, `float(t)`, `int(t)` and `bool(t)` dispatch to)
and `Tensor.tolist()` / `Tensor.numpy()`, which on the CPU bypass the dispatcher. Each is attributed
to where it came from: wf's own code, or torch's code that reads host tensors by design on every
device: torch.optim's `step` counters (`capturable=False`) and the DataLoader's samplers and seeds
(drawn from CPU generators). Those never wait for a device; `device_reads` leaves them out."""

from __future__ import annotations

import collections
import sys
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SCALAR_READ = torch.ops.aten._local_scalar_dense.default
# reads of host tensors by design, the same on every device: torch.optim's step counters, the
# DataLoader's draws, torchvision's random parameters (drawn on the CPU), and wf's own host_scalar
HOST_SIDE = ("optimizer", "loader", "transform draws", "host")


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads:` … `reads.total`, `reads.by_origin` ("optimizer", "loader", or the
    first wf frame's "module:line", else "other"). `mark()` starts a new interval: `since_mark` counts
    the reads after it, e.g. between two monitoring windows."""

    def __init__(self, outside_steps: tuple[str, ...] = ()) -> None:
        """`outside_steps`: names of functions whose reads are not a training step's (validation, an
        epoch's end): counted under "outside steps", e.g. ("validate", "end_epoch")."""
        super().__init__()
        self.outside_steps = outside_steps
        self.by_origin: collections.Counter[str] = collections.Counter()
        self.since_mark: collections.Counter[str] = collections.Counter()
        self._patched: dict[str, Any] = {}

    @property
    def total(self) -> int:
        return sum(self.by_origin.values())

    def device_reads(self, counter: collections.Counter[str] | None = None, *, in_steps: bool = False) -> int:
        """The reads that would wait for an accelerator: all but torch's own host-side ones (and with
        `in_steps`, those of the training steps only)."""
        counter = self.by_origin if counter is None else counter
        return sum(n for origin, n in counter.items()
                   if origin not in HOST_SIDE and not (in_steps and origin == "outside steps"))

    def mark(self) -> None:
        self.since_mark = collections.Counter()

    def _record(self) -> None:
        origin = _origin(sys._getframe(2), self.outside_steps)
        self.by_origin[origin] += 1
        self.since_mark[origin] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _SCALAR_READ:
            self._record()
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = original

            def counted(tensor, *args, _original=original, **kwargs):
                self._record()
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        self._patched.clear()
        return super().__exit__(*exc)


def host_scalar(tensor: torch.Tensor) -> float:
    """The value of a tensor that lives on the host by construction (a draw from torch's CPU
    generator): reading it waits for no device. Refuses a tensor on another device."""
    if tensor.device.type != "cpu":
        raise ValueError(f"host_scalar reads host tensors only, not one on {tensor.device}")
    return tensor.item()


def _origin(frame: Any, outside_steps: tuple[str, ...] = ()) -> str:
    """Who asked: torch.optim (its host-side step counters), the DataLoader (its samplers' draws), else
    the nearest frame of wf's own code."""
    first_wf = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if frame.f_code.co_name in outside_steps:
            return "outside steps"
        if "/torch/optim/" in filename and not filename.endswith("lr_scheduler.py"):
            return "optimizer"
        if "/torch/utils/data/" in filename:
            return "loader"
        name = frame.f_code.co_name
        if "/torchvision/transforms/v2/" in filename and (
                name == "make_params" or (name == "forward" and filename.endswith("_container.py"))):
            return "transform draws"  # a random parameter (MixUp's λ, RandomChoice's pick), drawn on the CPU
        if filename.endswith("host_reads.py") and name == "host_scalar":
            return "host"
        if first_wf is None and "/mlflow_core/" in filename and not filename.endswith("host_reads.py"):
            first_wf = f"{filename.rpartition('/mlflow_core/')[2]}:{frame.f_lineno}"
        frame = frame.f_back
    return first_wf or "other"
