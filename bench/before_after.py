"""The same commands from two versions of wf's source, interleaved in one run: a refactor must leave
them unchanged or faster. The earlier version is checked out (git worktree) and put first on
PYTHONPATH; the installed environment (torch, typer, …) serves both.

    python bench/before_after.py --before 5b58732 [--repeats 7]

Measured: `wf status` and `wf gate check --all --json` (no torch), `wf report baseline` (a phase's
end again: criteria, report, evidence, checklist marks) and `wf phase baseline` on digits (3 epochs,
every checkpoint kind on: best, top 3, periodic, last; the whole command, torch's import included),
each in a fresh process on its own copy of one project prepared once by the newer version. Prints
the medians and the ratio after / before.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = [("training.epochs", "3"), ("early_stopping.enabled", "false"), ("checkpointing.keep_best", "3"),
          ("checkpointing.checkpoint_every_n_epochs", "1")]
COMMANDS = {"wf status": ["status"], "wf gate check --all --json": ["gate", "check", "--all", "--json"],
            "wf report baseline": ["report", "baseline"],
            "wf phase baseline (3 epochs)": ["phase", "baseline", "--override-gate", "bench"]}


def wf(source: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1: a baseline may miss its criteria; it ended all the same
        raise SystemExit(f"{source.name}: wf {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the earlier commit")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wf-before-after-"))
    before = work / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True,
                   capture_output=True)
    try:
        sys.path.insert(0, str(REPO))
        from tests.helpers import configure

        template = work / "project"
        subprocess.run([sys.executable, "-m", "mlflow_core", "init", str(template)], cwd=work, check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        configure(template, CONFIG)
        for step in (["phase", "setup"], ["phase", "baseline", "--override-gate", "bench"]):
            wf(REPO, step, template)
        times: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name in COMMANDS}
        for i in range(args.repeats):  # interleaved: load on the shared machine hits both alike
            for name, command in COMMANDS.items():
                for label, source in (("before", before), ("after", REPO))[:: 1 if i % 2 else -1]:
                    copy = work / f"run-{label}"
                    shutil.rmtree(copy, ignore_errors=True)
                    shutil.copytree(template, copy, symlinks=True)
                    times[name][label].append(wf(source, command, copy))
        print(f"{'command':32} {'before (median)':>16} {'after (median)':>16} {'after / before':>15}")
        for name, t in times.items():
            b, a = statistics.median(t["before"]), statistics.median(t["after"])
            print(f"{name:32} {b:15.3f}s {a:15.3f}s {a / b:15.3f}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
