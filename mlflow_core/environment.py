"""Document the environment a run happens in (Phase 1): versions, hardware, git commit."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow_core import __version__
from mlflow_core.monitoring.nvml import GpuSampler

KEY_PACKAGES = ("wf", "torch", "torchvision", "numpy", "scikit-learn", "pydantic", "nvidia-ml-py",
                "matplotlib", "typer", "rich", "jinja2", "pyyaml")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that make mixed precision native rather than emulated: without them torch's CPU
# autocast converts every operand to and from fp32, and a convolution step runs 10-25x slower
# than in plain fp32 (measured by bench/cpu_precision.py).
NATIVE_CPU_FLAGS = {
    "bf16": ("avx512_bf16", "amx_bf16", "bf16"),  # x86 AVX-512 BF16 / AMX-BF16; Arm FEAT_BF16 ("bf16")
    "fp16": ("avx512_fp16", "amx_fp16", "asimdhp"),  # x86 AVX512-FP16 / AMX-FP16; Arm half-precision SIMD
}
_MACOS_FEATURES = {"bf16": "hw.optional.arm.FEAT_BF16", "fp16": "hw.optional.arm.FEAT_FP16"}


def cpu_precision_support(cpuinfo: str | None = None) -> dict[str, Any]:
    """Whether this CPU computes bf16 and fp16 natively: {"bf16": bool | None, "fp16": bool | None,
    "source": where that was read}. None means it could not be told (neither /proc/cpuinfo nor
    macOS's sysctl answered). `cpuinfo` is /proc/cpuinfo's text, read from the file when not given."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
            break  # every core lists the same flags
    if flags:
        return {"source": "/proc/cpuinfo flags",
                **{kind: any(f in flags for f in names) for kind, names in NATIVE_CPU_FLAGS.items()}}
    if platform.system() == "Darwin":
        found = {kind: _sysctl(name) for kind, name in _MACOS_FEATURES.items()}
        if any(v is not None for v in found.values()):
            return {"source": "sysctl", **found}
    return {"source": "unknown", "bf16": None, "fp16": None}


@functools.cache
def measure_autocast_slowdown(kind: str, repeats: int = 3) -> float:
    """Step time of a convolution block (forward and backward, 2×16×64×64) under CPU autocast in
    `kind`, over the same step in fp32: the best of `repeats` each, 0.04 s where it is native and
    0.4-1.1 s where it is emulated. Larger images slow down more (bench/cpu_precision.py: 22-27x at 64-256 px against 15x
    here), tiny ones less. It draws from its own generator: a seeded run's random stream is untouched."""
    import torch

    dtype_of = {"fp16": torch.float16, "bf16": torch.bfloat16}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, 64, generator=gen)
    w1 = torch.randn(16, 16, 3, 3, generator=gen).mul_(0.1).requires_grad_()
    w2 = torch.randn(16, 16, 3, 3, generator=gen).mul_(0.1).requires_grad_()

    def step(dtype: Any) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            hidden = torch.relu(torch.nn.functional.conv2d(x, w1, padding=1))
            y = torch.nn.functional.conv2d(hidden, w2, padding=1)
        y.float().square().mean().backward()
        return time.perf_counter() - started

    def best(dtype: Any) -> float:
        step(dtype)  # the first call pays for kernel selection
        return min(step(dtype) for _ in range(repeats))

    return max(1.0, best(dtype_of[kind]) / best(None))


def _sysctl(name: str) -> bool | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() == "1" if out.returncode == 0 else None


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _git(project_root: Path) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "note": "not a git repository (or git missing); commit your project for provenance"}
    dirty = run("status", "--porcelain")
    return {"commit": commit, "branch": run("rev-parse", "--abbrev-ref", "HEAD"), "dirty": bool(dirty)}


def capture_environment(project_root: Path, gpu_sampler: GpuSampler | None = None) -> dict[str, Any]:
    import torch

    packages = {}
    for name in KEY_PACKAGES:
        try:  # wf's own version is the engine's (its distribution is named wf-phases)
            packages[name] = __version__ if name == "wf" else metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    sampler = gpu_sampler or GpuSampler()
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "gpus": sampler.devices,
        "nvml": "available" if sampler.available else sampler.reason,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_native_precision": cpu_precision_support(),
        # what the flags cannot say: whether torch's kernels compute it natively (autocast vs fp32)
        "cpu_autocast_slowdown": None if cuda else {k: round(measure_autocast_slowdown(k), 1) for k in NATIVE_CPU_FLAGS},
        "ram_gib": _ram_gib(),
        "git": _git(project_root),
        "packages": packages,
    }


def paired_torchvision(torch_version: str) -> str | None:
    """The torchvision release series built for a torch release: torch 2.N pairs with torchvision
    0.(N+15) (2.3 with 0.18, 2.9 with 0.24, 2.14 with 0.29). None where the rule is not known."""
    match = re.match(r"^2\.(\d+)", torch_version)
    return f"0.{int(match.group(1)) + 15}" if match else None


def pair_fix(torch_version: str, series: str | None) -> str:
    """The command that makes the pair fit: both reinstalled from one index. `--force-reinstall`,
    because pip takes the installed versions as satisfying the same pins whichever build they are;
    `--no-deps`, so that it does not download the CUDA libraries again; the PyTorch index of the
    installed build (+cpu, +cu126 …), whose wheels are built together."""
    base, _, local = torch_version.partition("+")
    index = (f" --index-url https://download.pytorch.org/whl/{local}"
             if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+|xpu", local) else "")
    vision = f"'torchvision=={series}.*'" if series else "torchvision"
    return (f"install both from the same index: `pip install --force-reinstall --no-deps 'torch=={base}' "
            f"{vision}{index}`")


def torch_pair_problem(*, load_ops: bool) -> str | None:
    """Why the installed torch and torchvision do not work together, or None. From their versions
    (no import), and with `load_ops` by loading torchvision's compiled operators, which fail when
    the two come from different builds ('operator torchvision::nms does not exist')."""
    try:
        torch_version, vision_version = metadata.version("torch"), metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None  # a missing package is said by missing_training_stack
    torch_base = torch_version.split("+")[0]
    series = paired_torchvision(torch_base)
    fix = pair_fix(torch_version, series)
    if series and not (vision_version == series or vision_version.startswith(f"{series}.")):
        return (f"torchvision {vision_version} does not match torch {torch_version} (torch {torch_base} pairs "
                f"with torchvision {series}); {fix}")
    if load_ops:
        try:
            import torch
            import torchvision  # noqa: F401 - registers its operators, or fails to

            torch.ops.torchvision.nms  # noqa: B018 - an operator of the compiled library, looked up
        except (RuntimeError, OSError, ImportError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return f"torchvision {vision_version} does not match torch {torch_version} ({reason}); {fix}"
    return None
