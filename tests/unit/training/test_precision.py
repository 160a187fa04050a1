"""Which precision a CPU run trains in. The CPU's feature flags are a hardware boundary: the parsing
is tested on /proc/cpuinfo texts of several processors, and the trainer's fallback with the flags
stood in for; the real CPU's path runs in the template and smoke tests."""

from __future__ import annotations

import pytest

from mlflow_core.environment import cpu_precision_support

EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
processor\t: 1
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ICE_LAKE = """model name\t: Intel(R) Xeon(R) Platinum 8375C
flags\t\t: fpu avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm bf16 i8mm
"""


@pytest.mark.parametrize("cpuinfo, bf16, fp16", [
    (EPYC_ZEN3, False, False),  # AVX2 only: both emulated (f16c converts, it does not compute)
    (ICE_LAKE, False, False),  # AVX-512 without its BF16 and FP16 extensions
    (SAPPHIRE_RAPIDS, True, True),
    (GRAVITON3, True, True),
], ids=["epyc-zen3", "ice-lake", "sapphire-rapids", "graviton3"])
def test_native_precision_is_read_from_the_cpu_flags(cpuinfo, bf16, fp16):
    support = cpu_precision_support(cpuinfo)
    assert (support["bf16"], support["fp16"], support["source"]) == (bf16, fp16, "/proc/cpuinfo flags")


def test_the_torch_pair_fix_reinstalls_both_from_the_installed_builds_index():
    from mlflow_core.environment import pair_fix

    assert pair_fix("2.13.0+cpu", "0.28") == (
        "install both from the same index: `pip install --force-reinstall --no-deps 'torch==2.13.0' "
        "'torchvision==0.28.*' --index-url https://download.pytorch.org/whl/cpu`")
    assert pair_fix("2.14.1+cu128", "0.29").endswith("--index-url https://download.pytorch.org/whl/cu128`")
    assert "--index-url" not in pair_fix("2.14.1", "0.29")  # PyPI's own build: the default index


def test_a_cpu_that_cannot_be_read_is_unknown_not_emulated(monkeypatch):
    monkeypatch.setattr("platform.system", lambda: "Windows")
    assert cpu_precision_support("") == {"source": "unknown", "bf16": None, "fp16": None}


torch = pytest.importorskip("torch")
from mlflow_core.training.precision import measure_autocast_slowdown, plan_precision  # noqa: E402

EMULATED = {"bf16": False, "fp16": False}
NATIVE = {"bf16": True, "fp16": True}


@pytest.mark.parametrize("requested, device, short, native, slowdown, mode, says", [
    ("fp32", "cpu", True, EMULATED, 20.0, "fp32", False),
    ("bf16", "cuda", True, EMULATED, 20.0, "bf16", False),  # a GPU runs what is configured
    ("bf16", "cpu", True, NATIVE, 1.0, "bf16", False),
    ("bf16", "cpu", False, {"bf16": None}, 1.1, "bf16", False),  # no flags to read, measured fast
    ("bf16", "cpu", True, EMULATED, 20.0, "fp32", True),  # a short check falls back
    ("fp16", "cpu", True, EMULATED, 20.0, "fp32", True),
    ("fp16", "cpu", True, NATIVE, 137.0, "fp32", True),  # AVX512-FP16 reported, yet torch emulates it
    ("bf16", "cpu", False, EMULATED, 20.0, "bf16", True),  # a full run trains as configured, and is told
])
def test_plan_precision(requested, device, short, native, slowdown, mode, says):
    plan = plan_precision(requested, device, short_check=short, native=native, slowdown=slowdown)
    assert plan.mode == mode and plan.requested == requested
    assert (plan.note is not None) == says
    if says:
        flagged = native[requested]
        assert (f"without native {requested}" in plan.note) != flagged
        assert ("but torch's CPU kernels do not compute it natively" in plan.note) == flagged
        assert f"ran {slowdown:.0f}x slower than in fp32" in plan.note
        assert ("trains in fp32 instead" in plan.note) == short


def test_the_slowdown_probe_leaves_the_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    measure_autocast_slowdown.__wrapped__("bf16", repeats=1)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("short", [True, False], ids=["short-check", "full-run"])
def test_the_trainer_falls_back_to_fp32_only_for_a_short_check(tmp_path, monkeypatch, short):
    from mlflow_core.config import load_config_text
    from mlflow_core.training.trainer import Trainer

    monkeypatch.setattr("mlflow_core.training.precision.cpu_precision_support", lambda: EMULATED)
    # the hardware boundary: a CPU that emulates bf16 (this one may compute it natively)
    monkeypatch.setattr("mlflow_core.training.precision.measure_autocast_slowdown", lambda _kind: 20.0)
    cfg = load_config_text("training: {device: cpu, epochs: 1, batch_size: 256, precision: bf16}\n"
                           "model: {channels: [4]}\ncheckpointing: {save_best: false, checkpoint_every_n_epochs: 0}\n",
                           "t")
    result = Trainer(cfg, tmp_path, tmp_path / "run", short_check=short).fit(max_steps=2)
    record = result.metrics["precision"]
    assert record["requested"] == "bf16" and record["cpu_native"] is False and record["cpu_slowdown"] >= 1
    assert record["mode"] == ("fp32" if short else "bf16")
    fallbacks = [a for a in result.anomalies if a["kind"] == "precision_fallback"]
    assert len(fallbacks) == (1 if short else 0)
