"""Latency of the commands that never import torch, against `python -c "import torch"` in the
same run. Goal: median < 0.3 s each.

    python bench/cli_latency.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [["status"], ["gate", "check", "setup", "--json"], ["checklist", "show", "reproducibility"],
            ["config", "validate"]]


def timed(argv: list[str], cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "p"
    subprocess.run([sys.executable, "-m", "mlflow_core", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    empty = timed([sys.executable, "-c", "pass"], root, args.repeats)
    torch_import = timed([sys.executable, "-c", "import torch"], root, max(3, args.repeats // 3))
    print(f"python -c pass:         {empty:.3f} s")
    print(f"python -c 'import torch': {torch_import:.3f} s")
    for cmd in COMMANDS:
        t = timed([sys.executable, "-m", "mlflow_core", *cmd], root, args.repeats)
        print(f"wf {' '.join(cmd):<32} median {t:.3f} s  ({t / torch_import:.2f}× an import of torch)"
              f"  {'ok' if t < 0.3 else 'over the 0.3 s goal'}")


if __name__ == "__main__":
    main()
