"""Finding and building a split's pack for the trainer (the pack format is workflow/packs.py's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_core.config.schema import WorkflowConfig


def packed_npz_splits(cfg: WorkflowConfig, project_root: Path, root: Path, names: tuple[str, ...],
                      target_key: str) -> dict[str, Any]:
    """The splits whose pack matches their files (data.pack auto), or every split, packed now where
    its pack is missing or stale (data.pack on)."""
    from mlflow_core.workflow.datafiles import stat_cache
    from mlflow_core.workflow.npz import npz_files
    from mlflow_core.workflow.packs import build_pack, find_pack, pack_key

    cache, found = stat_cache(project_root), {}
    for split in names:
        if cfg.data.pack == "on":
            found[split], _ = build_pack(project_root, root / split, split, cache, image_key=cfg.data.image_key,
                                         target_key=target_key, segmentation=cfg.task == "segmentation")
            continue
        pack = find_pack(project_root, split, pack_key(npz_files(root / split), cache, cfg.data.image_key,
                                                       target_key))
        if pack is not None:
            found[split] = pack
    cache.save()
    return found


def stored_pack(project_root: Path, split: str, key: str, source: Path, names: list[str], dataset: Any, build: bool,
                meta: dict[str, Any], on_message: Callable[[str], None] | None) -> tuple[Any, bool]:
    """The pack of a split of image files read by `dataset` (pixels as stored, resized when asked):
    found by its key, else built when `build`. uint8 images are stored scaled (read as value / 255,
    as torchvision does); any other dtype as it is, like NPZ."""
    import time

    from mlflow_core.workflow.packs import find_pack, write_pack

    pack = find_pack(project_root, split, key)
    if pack is not None or not build:
        return pack, False
    t0 = time.perf_counter()

    def read(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, target = dataset[i]
        return np.asarray(image), np.asarray(target, dtype=np.int64)
    scaled = np.asarray(dataset[0][0]).dtype == np.uint8
    said = [time.perf_counter()]

    def progress(done: int, total: int) -> None:  # a line every 10 s, not one per chunk of images
        if on_message and done < total and time.perf_counter() - said[0] >= 10.0:
            said[0] = time.perf_counter()
            on_message(f"{split}: {done:,}/{total:,} images")

    pack = write_pack(project_root, split, key, source, names, read, meta, progress, scaled=scaled)
    if on_message:
        on_message(f"{split}: {len(names):,} images packed in {time.perf_counter() - t0:.1f} s")
    return pack, True
