"""The Sentinel-2 patch template ( 5-conv CNN, 6-band 224×224 NPZ patches) on the GPU: the template as
written (bf16 autocast, channels_last, TF32) against the same run in plain fp32, measured in the same
process: samples/s, NVML utilization (median over the run) and data wait, and their ratios.

    python bench/sentinel2_template_gpu.py [--train 4096] [--epochs 3] [--workers 8] [--batch 64] [--device cuda]

Issue 6's goal: median utilization >= 90 % with AMP and channels_last. `--device cpu` checks that
the script runs on a machine without a GPU (utilization is then not measured).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mlflow_core.config import load_config
from mlflow_core.config.schema import with_changes
from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.scaffold import write_patches

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "configs" / "sentinel2_patch_cnn.yaml"


def measure(cfg, root: Path, label: str) -> dict:
    sampler = GpuSampler(0.2, cfg.monitoring.gpu_utilization_target)
    result = Trainer(cfg, root, None, run_id=label, gpu_sampler=sampler).fit()
    epochs = result.metrics["epochs"][1:] or result.metrics["epochs"]  # the first epoch warms up
    gpu = result.metrics["gpu"]
    return {"label": label, "samples_per_s": statistics.median(e["samples_per_s"] for e in epochs),
            "data_wait": statistics.median(e["data_wait_fraction"] for e in epochs),
            "gpu_median": gpu.get("p50") if gpu.get("available") else None,
            "gpu_mean": gpu.get("mean") if gpu.get("available") else None,
            "gpu": gpu.get("reason") if not gpu.get("available") else gpu.get("headline_device"),
            "val_accuracy": result.metrics["epochs"][-1].get("val_accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    write_patches(root / "data" / "sentinel2", size=224, classes=8, train=args.train, val=max(args.train // 8, 16))
    template = with_changes(load_config(TEMPLATE), {
        "training.epochs": args.epochs, "training.batch_size": args.batch, "data.num_workers": args.workers,
        "training.device": args.device, "early_stopping.enabled": False, "checkpointing.save_best": False,
        "checkpointing.save_last": False, "checkpointing.checkpoint_every_n_epochs": 0})
    plain = with_changes(template, {"training.precision": "fp32", "training.channels_last": False,
                                    "training.tf32": False})
    rows = [measure(plain, root, "plain fp32"), measure(template, root, "template (bf16, channels_last, TF32)")]
    print(f"Sentinel-2 patch template, {args.train} patches 6×224×224, batch {args.batch}, {args.workers} workers, "
          f"{args.epochs} epochs on {args.device}")
    for r in rows:
        util = f"{r['gpu_median']:.0f} % median ({r['gpu_mean']:.0f} % mean)" if r["gpu_median"] is not None else r["gpu"]
        print(f"  {r['label']:<38} {r['samples_per_s']:>9.1f} samples/s  data wait {r['data_wait']:.1%}  GPU {util}  "
              f"val acc {r['val_accuracy']:.3f}")
    print(f"  speed-up of the template over plain fp32: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f}×")


if __name__ == "__main__":
    main()
