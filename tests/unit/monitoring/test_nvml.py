"""NVML is a hardware boundary: a fake module stands in for it here (the real path runs on a GPU)."""

from types import SimpleNamespace

import pytest

from mlflow_core.monitoring.nvml import GpuSampler, summarize


class FakeNvml:
    def __init__(self, utils):
        self.utils = list(utils)

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlSystemGetDriverVersion(self):
        return "999.1"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=8 * 2**30, used=2 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.utils.pop(0) if self.utils else 0)


def test_summary_of_samples():
    sampler = GpuSampler(interval_s=0.01, target_percent=60, nvml=FakeNvml([10, 50, 70, 90, 100]))
    for _ in range(5):
        sampler.sample_once()
    s = sampler.summary()
    assert s["available"] and s["samples"] == 5
    assert (s["mean"], s["p50"], s["p5"], s["p95"]) == (64.0, 70.0, 18.0, 98.0)
    assert s["share_above_target"] == 0.6
    assert s["devices"][0]["name"] == "Fake GPU" and s["devices"][0]["memory_used_mib_max"] == 2048.0


def test_thread_samples_and_stops():
    sampler = GpuSampler(interval_s=0.005, nvml=FakeNvml([80] * 1000)).start()
    import time
    time.sleep(0.1)
    sampler.stop()
    assert sampler.summary()["samples"] >= 5


def test_no_gpu_says_so_plainly():
    sampler = GpuSampler()  # on this machine: no driver or no package
    if sampler.available:
        pytest.skip("a real GPU is present")
    assert sampler.summary() == {"available": False, "reason": sampler.reason}
    assert sampler.reason


def test_summarize_empty():
    assert summarize([], 60)["samples"] == 0
