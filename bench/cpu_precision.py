"""CPU autocast in bf16 and fp16 against plain fp32, on this processor: one forward and backward step
of a few convolution shapes, the median of several steps each, and the ratio to fp32 measured in the
same run. It shows whether this CPU computes reduced precision natively (the ratio is near or below
1) or emulates it (10-25x on AVX2-only processors), which is what wf's precision plan warns about
(mlflow_core/training/precision.py), next to the flags wf reads.

    python bench/cpu_precision.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mlflow_core.environment import cpu_model, cpu_precision_support
from mlflow_core.training.precision import measure_autocast_slowdown

# (name, batch shape, channels of the two 3×3 convolutions): the first is the case measured in the
# issue that started this (2×5×256×256, 7.5 s against 0.31 s), then patch-sized and small ones
SHAPES = [
    ("tile 2×5×256×256, 2 convs of 16", (2, 5, 256, 256), 16),
    ("patch 8×6×64×64, 2 convs of 32", (8, 6, 64, 64), 32),
    ("small 32×1×8×8, 2 convs of 32", (32, 1, 8, 8), 32),
]


def step_time(shape: tuple[int, ...], channels: int, dtype: torch.dtype | None, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w1 = torch.randn(channels, shape[1], 3, 3, generator=gen).mul_(0.1).requires_grad_()
    w2 = torch.randn(channels, channels, 3, 3, generator=gen).mul_(0.1).requires_grad_()
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            y = F.conv2d(F.relu(F.conv2d(x, w1, padding=1)), w2, padding=1)
        y.float().square().mean().backward()
        if i:  # the first step pays for kernel selection
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    support = cpu_precision_support()
    print(f"CPU: {cpu_model()} · {torch.get_num_threads()} threads · torch {torch.__version__} · "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"native (from {support['source']}): bf16 {support['bf16']}, fp16 {support['fp16']}")
    print(f"{'shape':34}{'fp32 ms':>10}{'bf16 ms':>10}{'fp16 ms':>10}{'bf16/fp32':>11}{'fp16/fp32':>11}")
    for name, shape, channels in SHAPES:
        fp32 = step_time(shape, channels, None, args.repeats)
        bf16 = step_time(shape, channels, torch.bfloat16, args.repeats)
        fp16 = step_time(shape, channels, torch.float16, args.repeats)
        print(f"{name:34}{fp32 * 1e3:>10.1f}{bf16 * 1e3:>10.1f}{fp16 * 1e3:>10.1f}"
              f"{bf16 / fp32:>10.1f}x{fp16 / fp32:>10.1f}x")
    print(f"wf's own probe (what its warning quotes): bf16 {measure_autocast_slowdown('bf16'):.1f}x, "
          f"fp16 {measure_autocast_slowdown('fp16'):.1f}x")


if __name__ == "__main__":
    main()
