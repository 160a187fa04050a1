"""The data path alone: samples/s of wf's per-file NPZ loader, of wf's packed loader, and of a raw
memory-mapped gather (the host's limit), side by side in one run.

For each patch shape and dtype, N one-.npz-per-sample patches are written as `wf init --example
patches` writes them (compressed), packed with `wf data pack`'s code, then read for whole shuffled
epochs of batch 128 through:

- per-file: `NpzPatchDataset` through `make_loader` (data.pack: off), the path before packing;
- packed:   `PackedDataset` through the same `make_loader` (data.pack: auto, a pack present),
            batches converted to float32 on the host (what setup's checks and evaluation read);
- raw:      `numpy.load(mmap_mode="r")` and one fancy-indexed gather per batch, converted to a
            float32 tensor: what any loader of this pack could reach on this host;
- stored:   the trainer's loader of a pack (`PackedDataset.stored()`): batches in the pack's dtype,
            converted and normalised on the training device (training/device_batches.py), against
            `raw stored`, the same gather left in its dtype.

0 and 2 DataLoader workers for the wf paths; each figure is the best of `--repeats` epochs, after one
epoch that warms the page cache (every path reads from memory, as a second epoch does in training).
Goals (issue "Feed the GPU"): packed ≥ 20× per-file at 64×64 and ≥ 5× at 224×224, and ≥ 0.7× raw.

    python bench/loader.py [--samples64 2048] [--samples224 384] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlflow_core.config import load_config_text
from mlflow_core.training.data.datasets import NpzPatchDataset
from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.data.packed import PackedDataset
from mlflow_core.workflow.datafiles import StatCache
from mlflow_core.workflow.packs import build_pack

BATCH = 128


def write_patches(folder: Path, samples: int, size: int, dtype: str, seed: int = 0) -> None:
    """6-band patches: smooth fields plus sensor noise, in Sentinel-2's ranges (uint16 digital numbers
    0..10000, or float32 reflectance 0..1), compressed as `np.savez_compressed` writes them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.random((6, size // 8, size // 8))
    field = np.kron(base, np.ones((8, 8)))
    for i in range(samples):
        image = np.clip(field + 0.05 * rng.standard_normal((6, size, size)), 0, 1)
        image = (image * 10000).astype(np.uint16) if dtype == "uint16" else image.astype(np.float32)
        np.savez_compressed(folder / f"patch_{i:05d}.npz", image=image, label=np.int64(i % 4))


def epoch_rate(loader_factory, repeats: int) -> float:
    """Samples/s of the best of `repeats` full epochs (after one warm-up epoch)."""
    best = 0.0
    for r in range(repeats + 1):
        loader = loader_factory(r)
        t0, seen = time.perf_counter(), 0
        for inputs, _ in loader:
            seen += inputs.shape[0]
        rate = seen / (time.perf_counter() - t0)
        if r:
            best = max(best, rate)
    return best


def wf_loader(dataset, workers: int):
    cfg = load_config_text(f"data: {{num_workers: {workers}}}\ntraining: {{batch_size: {BATCH}}}\n", "bench")
    return lambda r: make_loader(dataset, cfg, train=True, device=torch.device("cpu"), seed=r)


def raw_gather(pack_images: Path, samples: int, as_stored: bool = False):
    images = np.load(pack_images, mmap_mode="r")

    def epochs(r: int):
        order = np.random.default_rng(r).permutation(samples)
        for start in range(0, samples, BATCH):
            batch = images[order[start:start + BATCH]]
            yield torch.from_numpy(batch if as_stored else batch.astype(np.float32, copy=False)), None
    return epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples64", type=int, default=2048)
    parser.add_argument("--samples224", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the generated data here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="wf-loader-"))
    rows = []
    try:
        for size, samples in ((64, args.samples64), (224, args.samples224)):
            for dtype in ("uint16", "float32"):
                project = root / f"p{size}_{dtype}"
                folder = project / "data" / "train"
                if not folder.is_dir():
                    write_patches(folder, samples, size, dtype)
                cache = StatCache(project / ".wf" / "cache" / "data-stat.sqlite")
                pack, _ = build_pack(project, folder, "train", cache, image_key="image", target_key="label")
                per_file, packed = NpzPatchDataset(folder), PackedDataset(pack)
                raw = epoch_rate(raw_gather(pack.images, samples), args.repeats)
                raw_stored = epoch_rate(raw_gather(pack.images, samples, as_stored=True), args.repeats)
                stored = epoch_rate(wf_loader(packed.stored(), 0), args.repeats)  # 0 workers: the trainer's
                for workers in (0, 2):
                    slow = epoch_rate(wf_loader(per_file, workers), args.repeats)
                    fast = epoch_rate(wf_loader(packed, workers), args.repeats)
                    mb = pack.images.stat().st_size / samples / 1e6
                    rows.append((f"6×{size}×{size} {dtype}", workers, slow, fast, raw, mb, stored, raw_stored))
                    print(f"6×{size}×{size} {dtype:7} workers {workers}: per-file {slow:9,.0f}/s  packed {fast:9,.0f}/s  "
                          f"raw gather {raw:9,.0f}/s  packed/per-file {fast / slow:5.1f}×  packed/raw {fast / raw:4.2f}  "
                          f"stored {stored:9,.0f}/s  stored/per-file {stored / slow:5.1f}×  "
                          f"stored/raw stored {stored / raw_stored:4.2f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| Patch | Workers | Per-file (samples/s) | Packed (samples/s) | Raw gather (samples/s) | Packed ÷ per-file "
          "| Packed ÷ raw | Stored, the trainer's (samples/s) | Stored ÷ per-file | Stored ÷ raw stored |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, workers, slow, fast, raw, mb, stored, raw_stored in rows:
        print(f"| {name} ({mb:.2f} MB) | {workers} | {slow:,.0f} | {fast:,.0f} | {raw:,.0f} | **{fast / slow:.1f}×** "
              f"| {fast / raw:.2f} | {stored:,.0f} | **{stored / slow:.1f}×** | {stored / raw_stored:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
