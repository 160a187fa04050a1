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


def time_once(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "p"
    subprocess.run([sys.executable, "-m", "mlflow_core", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    runs = {"python -c pass": [sys.executable, "-c", "pass"],
            "import typer, rich, pydantic (floor)": [sys.executable, "-c", "import typer, rich.console, pydantic"],
            **{"wf " + " ".join(c): [sys.executable, "-m", "mlflow_core", *c] for c in COMMANDS}}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved rounds: load on the machine hits every command alike
        for name, argv in runs.items():
            times[name].append(time_once(argv, root))
    torch_import = statistics.median(time_once([sys.executable, "-c", "import torch"], root) for _ in range(3))
    print(f"{args.repeats} interleaved rounds; a fresh project (no evidence yet: the worst case for checks)")
    print(f"{'python -c import torch':<40} median {torch_import:.3f} s")
    for name, values in times.items():
        med = statistics.median(values)
        verdict = "" if not name.startswith("wf") else ("  ok" if med < 0.3 else "  over the 0.3 s goal")
        print(f"{name:<40} median {med:.3f} s  min {min(values):.3f} s  ({med / torch_import:.2f}× import torch){verdict}")


if __name__ == "__main__":
    main()
