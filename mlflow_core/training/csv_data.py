"""`data.source: csv`: a table of image files and labels per split (workflow/tables.py), read as
ImageFolder's images are (training/images.py: PNG, JPEG … through PIL in one mode, TIFF / GeoTIFF
through tifffile with every band), labels as class names or ids, or masks for segmentation; packed
like NPZ and ImageFolder data by `wf data pack`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mlflow_core.errors import DataError
from mlflow_core.training.images import MODES, ImageLoader, as_input, read_mask, sampled_channels
from mlflow_core.workflow.npz import mask_of
from mlflow_core.workflow.tables import Row, class_ids, csv_splits, read_rows


class CsvImages(Dataset):
    """One split of a CSV manifest: (image, label id) or, for segmentation, (image, mask)."""

    def __init__(self, root: Path, rows: list[Row], ids: dict[str, int], loader: Any, transform: Any):
        self.root, self.loader, self.transform = root, loader, transform
        self.samples = [(str(root / r.path), ids[r.label] if r.label is not None else str(root / r.mask))
                        for r in rows]
        self.files = [Path(path) for path, _ in self.samples]  # how data checks name a sample
        # and its mask, where a mask is a file of its own (what a wrong class id is found in)
        self.mask_files = [Path(target) if isinstance(target, str) else None for _, target in self.samples]

    def for_training(self) -> CsvImages:
        """The same split with its pixels made the model's input (uint8 scaled, the rest as stored)."""
        copy = CsvImages.__new__(CsvImages)
        copy.__dict__.update(self.__dict__, transform=_ModelInput(self.transform))
        return copy

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        path, target = self.samples[index]
        image = self.transform(self.loader(path))
        if isinstance(target, str):  # a mask file: (H, W) class ids, on the image's height and width
            mask = mask_of(Path(target), read_mask(target), image)
            return image, torch.as_tensor(mask.astype("int64"))
        return image, target


class _ModelInput:
    """pixels, then as_input: a class, not a closure, since worker processes pickle it."""

    def __init__(self, pixels: Callable[[Any], Any]):
        self.pixels = pixels

    def __call__(self, image: Any) -> torch.Tensor:
        return as_input(self.pixels(image))


def csv_layout(cfg: Any, root: Path) -> tuple[dict[str, list[Row]], dict[str, int], list[str] | None]:
    """Each split's rows, the label ids (from the training split) and the class names."""
    segmentation = cfg.task == "segmentation"
    splits = csv_splits(root)
    if not {"train", "val"} <= set(splits):
        raise DataError(f"{root}: data.source csv needs train.csv and val.csv there (found: "
                        f"{', '.join(f'{s}.csv' for s in splits) or 'none'})")
    rows = {split: read_rows(root, split, cfg.data, segmentation) for split in splits}
    if segmentation:
        return rows, {}, None
    ids, names = class_ids(rows["train"])
    for split, split_rows in rows.items():
        unknown = sorted({r.label for r in split_rows if r.label not in ids})
        if unknown:
            raise DataError(f"{root / f'{split}.csv'}: label(s) {', '.join(map(repr, unknown[:5]))} do not appear in "
                            "train.csv; every class must be in the training split")
    return rows, ids, names


def csv_datasets(cfg: Any, root: Path, pixels: Callable[[Any], Any]
                 ) -> tuple[dict[str, CsvImages], list[str] | None, str]:
    """Each split as a dataset of the pixels as stored (what packs hold; `for_training` for the
    model's input), the class names, and how many channels the images are read with, and why."""
    rows, ids, names = csv_layout(cfg, root)
    firsts = list({r.label: str(root / r.path) for r in reversed(rows["train"])}.values())
    paths = firsts + [str(root / r.path) for r in rows["train"] if str(root / r.path) not in set(firsts)]
    channels, why = sampled_channels(paths, cfg.data.channels)
    loader = ImageLoader(MODES[min(channels, 4)])
    return {split: CsvImages(root, split_rows, ids, loader, pixels) for split, split_rows in rows.items()}, names, why


def csv_pack_key(cfg: Any, root: Path, split: str, dataset: CsvImages, cache: Any) -> str:
    """What a split's pack is built from: its CSV, every file it names, the size and the format."""
    from mlflow_core.workflow.packs import PACK_FORMAT

    digest = hashlib.sha256(f"wf-pack {PACK_FORMAT} csv {cfg.data.image_size} {dataset.loader.mode}\n".encode())
    digest.update(cache.sha256(str(root / f"{split}.csv")).encode())
    for path, target in dataset.samples:
        digest.update(f"{path}\0{target}\0{cache.sha256(path)}\n".encode())
        if isinstance(target, str):
            digest.update(cache.sha256(target).encode())
    return digest.hexdigest()
