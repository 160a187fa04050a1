"""MLflow tracking's cost on the digits baseline: the same trainer, data and seed, with tracking off
and on (a real SQLite store in a temporary folder), alternated so that the machine's drift hits both.

Prints, per repeat, the training time (the epochs' own durations, as metrics.json records them:
validation included, start-up excluded) and the whole run's (building it, opening and ending its
MLflow run, the last batch sent), and the ratios on/off of the medians; the time spent opening the
store (MLflow's import, the store's migration) apart, since it is paid once per process.
Goal (issue: MLflow tracking): ratio ≤ 1.02.

    python bench/mlflow_overhead.py [--repeats 6] [--epochs 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    import torch

    from mlflow_core.config import load_config_text
    from mlflow_core.monitoring.mlflow_runs import PhaseRun
    from mlflow_core.training.trainer import Trainer

    torch.set_num_threads(1)
    text = (f"project: {{name: bench}}\ntraining: {{device: cpu, epochs: {args.epochs}}}\n"
            "early_stopping: {enabled: false}\nmonitoring: {mlflow: MLFLOW}\n")
    times: dict[bool, list[float]] = {False: [], True: []}
    walls: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="wf-bench-mlflow-") as tmp:
        root = Path(tmp)
        opened = time.perf_counter()
        tracked_cfg = load_config_text(text.replace("MLFLOW", "true"), "bench")
        PhaseRun.start(root, tracked_cfg, "baseline", "warm-up", root / "warm", {})  # import + migration
        opening = time.perf_counter() - opened
        for repeat in range(args.repeats):
            for tracked in (False, True) if repeat % 2 == 0 else (True, False):
                cfg = load_config_text(text.replace("MLFLOW", "true" if tracked else "false"), "bench")
                run_dir = root / f"r{repeat}-{int(tracked)}"
                link = None
                started = time.perf_counter()
                if tracked:
                    phase = PhaseRun.start(root, cfg, "baseline", run_dir.name, run_dir, {})
                    link = phase.link()
                result = Trainer(cfg, root, run_dir, run_id=run_dir.name, mlflow=link).fit()
                if tracked:
                    phase.end("FINISHED")
                wall = time.perf_counter() - started
                seconds = sum(e["duration_s"] for e in result.metrics["epochs"])
                times[tracked].append(seconds)
                walls[tracked].append(wall)
                print(f"repeat {repeat} tracking {'on ' if tracked else 'off'}: epochs {seconds:.3f} s, whole run "
                      f"{wall:.3f} s ({result.metrics['steps']} steps)", flush=True)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"\nmedian training time: off {off:.3f} s, on {on:.3f} s; ratio on/off {on / off:.3f} "
              f"(spread off {min(times[False]):.3f}–{max(times[False]):.3f}, on {min(times[True]):.3f}–"
              f"{max(times[True]):.3f})")
        won, woff = statistics.median(walls[True]), statistics.median(walls[False])
        print(f"median whole run (build, epochs, the run opened and ended in MLflow): off {woff:.3f} s, on "
              f"{won:.3f} s; ratio on/off {won / woff:.3f}; opening the store once per process: {opening:.2f} s")


if __name__ == "__main__":
    main()
