"""On a CUDA machine: run setup and baseline through the real CLI on 6-band Sentinel-2 NPZ patches and
report NVML utilization, samples/s and data-wait; then check that a NaN is caught at its exact step
through the windowed (sync-free) read-back path.

    python bench/gpu_baseline.py [--size 64] [--train 4096] [--workers 8] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from mlflow_core.cli import main as wf
from mlflow_core.workflow.scaffold import init_project, set_yaml_value, write_patches


def run(*args: str) -> int:
    try:
        wf(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def edit(config: Path, **values: str) -> None:
    text = config.read_text()
    for key, value in values.items():
        text = set_yaml_value(text, key.replace("__", "."), value)
    config.write_text(text)


def latest(root: Path, phase: str) -> dict:
    state = json.loads((root / ".wf" / "state.json").read_text())
    return [r for r in state["runs"] if r["phase"] == phase][-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--skip-nan", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp())

    # -- Sentinel-2 patch baseline on the GPU ------------------------------------------------------------
    lab = init_project(base / "lab", "patches").root
    shutil.rmtree(lab / "data" / "patches")
    write_patches(lab / "data" / "patches", size=args.size, classes=8, train=args.train, val=args.train // 8)
    edit(lab / "training_config.yaml", model__channels="[64, 128, 256, 512]", training__batch_size=str(args.batch),
         training__epochs=str(args.epochs), data__num_workers=str(args.workers), validation__target="0.5",
         model__name=args.model)
    os.chdir(lab)
    print("setup exit", run("phase", "setup"))
    run("checklist", "tick", "reproducibility", "data_documented", "config_committed")
    print("baseline exit", run("phase", "baseline"))
    setup = json.loads((lab / ".wf" / "evidence" / "setup.json").read_text())["facts"]
    print("reproducibility on GPU:", json.dumps(setup["reproducibility"]))
    print("gpus:", setup["environment"]["summary"])
    metrics = json.loads((lab / latest(lab, "baseline")["dir"] / "logs" / "metrics.json").read_text())
    gpu = metrics["gpu"]
    print("status", metrics["status"], "device", metrics["device"])
    print("NVML:", json.dumps({k: gpu.get(k) for k in ("available", "samples", "mean", "p5", "p50", "p95",
                                                        "share_above_target", "reason")}))
    for e in metrics["epochs"]:
        print(f"epoch {e['epoch']}: {e['samples_per_s']} samples/s, data wait {e['data_wait_fraction']:.1%}, "
              f"val acc {e.get('val_accuracy')}")
    print((lab / "reports" / "baseline_results.md").read_text().split("## GPU utilization")[1][:900])

    if args.skip_nan:
        return
    # -- NaN through the windowed read-back path -----------------------------------------------------
    d = init_project(base / "nan", "digits").root
    edit(d / "training_config.yaml", training__optimizer="sgd", training__learning_rate="1.0e4",
         model__batch_norm="false")
    os.chdir(d)
    run("phase", "setup")
    run("checklist", "tick", "reproducibility", "data_documented", "config_committed")
    code = run("phase", "baseline")
    rec = latest(d, "baseline")
    m = json.loads((d / rec["dir"] / "logs" / "metrics.json").read_text())
    rows = (d / rec["dir"] / "logs" / "steps.csv").read_text().splitlines()[1:]
    first_bad = next(i for i, r in enumerate(rows) if "nan" in r or "inf" in r)
    print(f"NaN run: exit {code}, status {m['status']}, device {m['device']}, recorded step "
          f"{m['nonfinite']['step']}, first non-finite row in steps.csv {first_bad}, dump {m['nonfinite'].get('dump')}")


if __name__ == "__main__":
    main()
