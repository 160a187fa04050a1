"""GPU utilization and memory through NVML, sampled by a background thread at a fixed interval.

NVML is the hardware boundary: tests pass a fake module as `nvml`. Without the package, a driver
or a GPU, the sampler says so plainly and records nothing.
"""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any


def _load_nvml() -> tuple[ModuleType | None, str]:
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
        return None, f"no NVIDIA driver ({exc.__class__.__name__}: {exc})"
    return pynvml, ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Start, stop, then read `summary()`. Samples every GPU NVML sees."""

    def __init__(self, interval_s: float = 0.5, target_percent: float = 60.0, nvml: ModuleType | None = None):
        self.interval_s = interval_s
        self.target_percent = target_percent
        self._nvml, self._reason = (nvml, "") if nvml is not None else _load_nvml()
        self._handles: list[Any] = []
        self._devices: list[dict[str, Any]] = []
        self.samples: list[tuple[float, int, float, float]] = []  # (t, gpu index, util %, memory used MiB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._nvml is not None:
            self._open_devices()

    def _open_devices(self) -> None:
        nvml = self._nvml
        assert nvml is not None
        try:
            count = nvml.nvmlDeviceGetCount()
            for i in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                self._handles.append(handle)
                self._devices.append({"index": i, "name": _text(nvml.nvmlDeviceGetName(handle)),
                                      "memory_total_mib": round(memory.total / 2**20)})
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            for device in self._devices:
                device["driver"] = driver
        except Exception as exc:
            self._nvml, self._reason = None, f"NVML failed: {exc}"
            self._handles, self._devices = [], []
            return
        if not self._handles:
            self._nvml, self._reason = None, "the NVIDIA driver reports no GPU"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def devices(self) -> list[dict[str, Any]]:
        return list(self._devices)

    def sample_once(self) -> None:
        nvml = self._nvml
        if nvml is None:
            return
        now = time.monotonic()
        for i, handle in enumerate(self._handles):
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:
                continue  # a transient NVML error loses one sample, not the run
            self.samples.append((now, i, float(util.gpu), memory.used / 2**20))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def start(self) -> GpuSampler:
        if self.available and self._thread is None:
            self.sample_once()
            self._thread = threading.Thread(target=self._loop, name="wf-nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self.sample_once()

    def latest(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        _, _, util, mem = self.samples[-1]
        return {"utilization": util, "memory_used_mib": mem}

    def summary(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self._reason or "no NVIDIA GPU"}
        out: dict[str, Any] = {"available": True, "interval_s": self.interval_s,
                               "target_percent": self.target_percent, "devices": []}
        for device in self._devices:
            utils = [s[2] for s in self.samples if s[1] == device["index"]]
            mems = [s[3] for s in self.samples if s[1] == device["index"]]
            out["devices"].append({**device, **summarize(utils, self.target_percent),
                                   "memory_used_mib_max": round(max(mems), 1) if mems else None})
        # The headline figures are those of the busiest GPU (the one the run trained on).
        busiest = max(out["devices"], key=lambda d: d.get("mean") or 0.0)
        out.update({k: busiest.get(k) for k in ("samples", "mean", "p5", "p50", "p95", "share_above_target")})
        out["headline_device"] = busiest["index"]
        return out


def summarize(values: list[float], target: float) -> dict[str, Any]:
    if not values:
        return {"samples": 0, "mean": None, "p5": None, "p50": None, "p95": None, "share_above_target": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        # linear interpolation between closest ranks
        pos = (len(ordered) - 1) * q
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"samples": len(values), "mean": round(sum(values) / len(values), 1), "p5": round(pct(0.05), 1),
            "p50": round(pct(0.5), 1), "p95": round(pct(0.95), 1),
            "share_above_target": round(sum(v > target for v in values) / len(values), 3)}
