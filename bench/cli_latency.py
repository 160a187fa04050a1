"""Latency of the commands that never import torch, against the import floor (typer, rich and
pydantic imported, nothing run), a typer command's own floor (a one-option typer app run once: typer
0.29 and later build a pydantic adapter per option, importing pydantic's validation machinery), and
`python -c "import torch"`, in the same run, interleaved. Goal: the read-only commands within 2× the
import floor (median of the rounds).

Wall time is what a person waits; process CPU time (user + system, from wait4) is printed beside it
because it hardly moves when the machine is shared, where wall time does.

    python bench/cli_latency.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [["--version"], ["status"], ["gate", "check", "--all"], ["gate", "check", "setup", "--json"],
            ["checklist", "show", "reproducibility"], ["config", "validate"]]
FLOOR = "import typer, rich, pydantic (floor)"
TYPER_APP = """
import typer
app = typer.Typer()
@app.command()
def main(flag: bool = typer.Option(False, "--flag")) -> None:
    pass
app(["--flag"], standalone_mode=False)
"""

# as installed: pip compiles every module at install (typer, rich and pydantic are timed with their
# bytecode), so wf's is cached too, whatever PYTHONDONTWRITEBYTECODE says here; a warm-up round writes it
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_once(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `argv`."""
    t0 = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped here
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "p"
    subprocess.run([sys.executable, "-m", "mlflow_core", "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    runs = {"python -c pass": [sys.executable, "-c", "pass"],
            FLOOR: [sys.executable, "-c", "import typer, rich.console, pydantic"],
            "a one-option typer command": [sys.executable, "-c", TYPER_APP],
            **{"wf " + " ".join(c): [sys.executable, "-m", "mlflow_core", *c] for c in COMMANDS}}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for argv in runs.values():  # the warm-up round: bytecode written, files in the page cache
        time_once(argv, root)
    for _ in range(args.repeats):  # interleaved rounds: load on the machine hits every command alike
        for name, argv in runs.items():
            w, c = time_once(argv, root)
            wall[name].append(w)
            cpu[name].append(c)
    torch_import = statistics.median(time_once([sys.executable, "-c", "import torch"], root)[0] for _ in range(3))
    print(f"{args.repeats} interleaved rounds; a fresh project (no evidence yet: the worst case for checks)")
    print(f"{'python -c import torch':<36} wall median {torch_import:.3f} s")
    floor, floor_cpu = statistics.median(wall[FLOOR]), statistics.median(cpu[FLOOR])
    for name in runs:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        verdict = "" if not name.startswith("wf") else ("  ok" if med <= 2 * floor else "  over 2× the floor")
        print(f"{name:<36} wall median {med:.3f} s (min {min(wall[name]):.3f}) {med / floor:.2f}× the floor · "
              f"CPU median {med_cpu:.3f} s {med_cpu / floor_cpu:.2f}× the floor's{verdict}")


if __name__ == "__main__":
    main()
