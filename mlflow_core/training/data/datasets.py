"""The per-file NPZ datasets, the `DataBundle` a source returns, and per-channel normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import DataError
from mlflow_core.training.data.packed import GatheredBatch
from mlflow_core.workflow.npz import npz_files, read_sample, read_target


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, channels first
    source: str
    normalization: dict[str, list[float]] | None = None  # per-channel mean and std, when applied
    augmented: bool = False  # the training split carries config.augmentation (training/augment.py)
    class_names: list[str] | None = None  # by class id: data.class_names, or ImageFolder's folder names
    counted_from_labels: bool = False  # num_classes is the largest label + 1 (data.num_classes null)


NORMALIZE_SAMPLES = 2048


class NormalizedDataset(Dataset):
    """(x − mean) / std per channel on the fly; other attributes (labels(), label()) pass through."""

    keeps_targets = True  # targets are the base's: target_reader looks past this wrapper

    def __init__(self, base: Dataset, mean: torch.Tensor, std: torch.Tensor):
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        inputs, label = self.base[index]
        return (torch.as_tensor(inputs) - self.mean) / self.std, label

    def __getitems__(self, indices: list[int]) -> Any:
        """A batch: normalised in one operation when the base gathers batches (a pack), the same
        arithmetic per element as one sample at a time."""
        gathered = self.base.__getitems__(indices) if callable(getattr(self.base, "__getitems__", None)) else None
        if isinstance(gathered, GatheredBatch):
            return GatheredBatch(((gathered[0] - self.mean) / self.std, gathered[1]))
        return [self[i] for i in indices] if gathered is None else [
            ((torch.as_tensor(x) - self.mean) / self.std, y) for x, y in gathered]

    def __getattr__(self, name: str) -> Any:
        # not set yet (unpickling in a worker): no recursion; dunders (the DataLoader's __getitems__)
        # are this wrapper's own, never the base's, which would skip the normalisation
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


def channel_statistics(dataset: Dataset, samples: int = NORMALIZE_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over evenly spaced samples (float64 sums)."""
    n = len(dataset)
    k = min(samples, n)
    indices = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    total = total_sq = None
    count = 0
    for i in indices:
        x = torch.as_tensor(dataset[i][0], dtype=torch.float64)
        flat = x.reshape(x.shape[0], -1)
        if not bool(torch.isfinite(flat).all()):
            continue  # setup's data scan reports non-finite samples; they must not poison the statistics
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = flat.pow(2).sum(1) if total_sq is None else total_sq + flat.pow(2).sum(1)
        count += flat.shape[1]
    if total is None:
        raise DataError("data.normalize: no finite training sample to measure the channel statistics on")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean, std


def normalized(bundle: DataBundle) -> DataBundle:
    mean, std = channel_statistics(bundle.train)
    shape = (-1,) + (1,) * (len(bundle.input_shape) - 1)
    m, s = mean.float().reshape(shape), std.float().reshape(shape)
    wrap = lambda ds: NormalizedDataset(ds, m, s) if ds is not None else None  # noqa: E731
    return DataBundle(wrap(bundle.train), wrap(bundle.val), wrap(bundle.test), bundle.num_classes,
                      bundle.input_shape, bundle.source + ", normalised per channel",
                      {"mean": mean.tolist(), "std": std.tolist()}, class_names=bundle.class_names,
                      counted_from_labels=bundle.counted_from_labels)


def data_folder(cfg: WorkflowConfig, project_root: Path) -> Path:
    assert cfg.data.path is not None
    root = (project_root / cfg.data.path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (data.path = {cfg.data.path!r})")
    return root


class NpzPatchDataset(Dataset):
    """One `.npz` per sample holding an image (C, H, W) — or (H, W, C), detected — and a label,
    read by workflow/npz.py, the pack writer's reader too."""

    segmentation = False

    def __init__(self, folder: Path, image_key: str = "image", label_key: str = "label"):
        self.folder = folder
        self.files = npz_files(folder)
        self.image_key, self.label_key = image_key, label_key
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (data.path)")
        if not self.files:
            raise DataError(f"{folder}: no .npz files found (data.path)")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image channels first and the target, as stored."""
        return read_sample(self.files[index], self.image_key, self.label_key, self.segmentation)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.read(index)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), int(label)

    def label(self, index: int) -> int:
        """Only the label: an .npz is a zip, so the image is never decompressed."""
        return int(read_target(self.files[index], self.label_key, segmentation=False))

    def labels(self) -> list[int]:
        return [self.label(i) for i in range(len(self))]

    target = label  # what target_reader calls


class NpzMaskDataset(NpzPatchDataset):
    """Segmentation: one `.npz` per sample holding an image and a mask (H, W) of class ids."""

    segmentation = True

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(index)
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))

    def label(self, index: int) -> int:  # a mask is not one label
        raise TypeError("segmentation samples have masks, not labels")

    def labels(self) -> list[int]:
        raise TypeError("segmentation samples have masks, not labels")

    def target(self, index: int) -> torch.Tensor:
        """Only the mask, as stored: the image is never decompressed."""
        mask = read_target(self.files[index], self.label_key, segmentation=True)
        return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
