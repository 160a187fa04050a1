"""What `wf verify` costs against the training it verifies, and what keeping its states costs training.

Two workloads, as a user runs them (`wf` commands in fresh processes, import and start-up included):
the digits quickstart's baseline (15 epochs of simple_cnn on 1,259 images) and the patches example's
(6-band 32x32 Sentinel-2 stand-ins, 10 epochs). Per repeat, alternated: the baseline with replay states
off (`checkpointing.replay_every_n_epochs: 0`, a project of its own: the setting is part of the config
setup verifies), the baseline with them on (the default, 1), then
`wf verify baseline` on the latter at the default budget (one segment: an epoch re-trained), whose
claims must all recompute. Prints each time and the ratios of the medians:

- verify / baseline, whole commands: both processes start Python, import torch and TorchDynamo (about
  3.5 s here), which dominates these small runs;
- recomputation / training run: verify's own work (its JSON's duration_s: the data hashed, the best
  checkpoint evaluated, the states loaded, an epoch re-trained) against the run's own duration (the
  evidence's duration_s), imports apart on both sides (goal ≤ 0.25);
- baseline with states / without: what keeping them costs training (hard links of the resume point
  every epoch writes anyway, and a digest of the weights per epoch).

    python bench/verify_cost.py [--repeats 3] [--workloads digits patches]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"digits": [], "patches": []}


def wf(project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, check=False)
    return time.perf_counter() - started, done


def set_replay(project: Path, every: int) -> None:
    config = project / "training_config.yaml"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(f"  replay_every_n_epochs: {every}\n" if line.startswith("  replay_every_n_epochs:")
                              else line for line in lines))


def prepare(root: Path, example: str, every: int) -> Path:
    """A project of `example` with replay states every `every` epochs (0: none), set up and ticked:
    the setting is part of the config setup verifies, so each setting is a project of its own."""
    name = f"{example}-{every}"
    subprocess.run([sys.executable, "-m", "mlflow_core", "init", name, "--example", example], cwd=root, check=True,
                   capture_output=True)
    project = root / name
    set_replay(project, every)
    for args in (("phase", "setup"), ("checklist", "tick", "reproducibility", "data_documented", "config_committed")):
        _, done = wf(project, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    return project


def measure(example: str, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"baseline, states off": [], "baseline, states on": [], "verify": [],
                                     "training (run)": [], "recomputation": []}
    with tempfile.TemporaryDirectory(prefix="wf-bench-verify-") as tmp:
        projects = {every: prepare(Path(tmp), example, every) for every in (0, 1)}
        for repeat in range(repeats):
            for every in ((0, 1) if repeat % 2 == 0 else (1, 0)):
                project = projects[every]
                seconds, done = wf(project, "phase", "baseline")  # a new run each time, the same config
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr
                times["baseline, states on" if every else "baseline, states off"].append(seconds)
                if every:
                    facts = json.loads((project / ".wf" / "evidence" / "baseline.json").read_text())["facts"]
                    times["training (run)"].append(facts["duration_s"] or 0.0)
                    seconds, done = wf(project, "verify", "baseline", "--seed", str(repeat), "--json")
                    verdict = json.loads(done.stdout)
                    assert done.returncode == 0 and verdict["passed"], done.stdout[-3000:]
                    times["verify"].append(seconds)
                    times["recomputation"].append(verdict["phases"][0]["duration_s"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}")
    for example in args.workloads:
        times = measure(example, args.repeats)
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{example}: {args.repeats} repeats")
        for name, values in times.items():
            print(f"  {name:<22} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {median[name]:.2f} s")
        print(f"  verify / baseline, whole commands:           {median['verify'] / median['baseline, states on']:.3f}")
        print(f"  recomputation / training run (imports apart): "
              f"{median['recomputation'] / median['training (run)']:.3f}")
        print(f"  baseline states on / states off:             "
              f"{median['baseline, states on'] / median['baseline, states off']:.3f}")


if __name__ == "__main__":
    main()
