"""Datasets for the shared trainer: NPZ patch folders, ImageFolder, scikit-learn digits, or a user's
own callable. Every source yields `(input_tensor, int_label)` items."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, TensorDataset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import DataError, UserInputError
from mlflow_core.training.images import MODES, ImageLoader, as_input, sampled_channels
from mlflow_core.training.seeding import make_generator, seed_worker
from mlflow_core.workflow.packs import channels_first, mask_of


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


class GatheredBatch(tuple):
    """(inputs, targets) of a whole batch, gathered at once by a dataset's `__getitems__`: the
    loader's collate passes it through (collate_batches)."""


def collate_batches(data: Any) -> Any:
    """The DataLoader's collate: a gathered batch as it is, per-sample items stacked as always."""
    from torch.utils.data import default_collate

    return tuple(data) if isinstance(data, GatheredBatch) else default_collate(data)


def _own(array: np.ndarray) -> torch.Tensor:
    """A tensor of `array`: a gathered batch (fancy indexing made it a fresh array) as it is, one
    sample (a view of the read-only map) copied."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


class PackedDataset(Dataset):
    """A split's pack (workflow/packs.py): samples read from two memory-mapped arrays. A batch is
    one gather (`__getitems__`, which the DataLoader calls with the batch's indices): no file opened,
    nothing decompressed, no Python per sample. Items equal NpzPatchDataset's (NpzMaskDataset's),
    converted to float32 as stored, so the batches and the weights are the same on either path."""

    def __init__(self, pack: Any, segmentation: bool = False, as_stored: bool = False):
        self.pack, self.segmentation, self.as_stored = pack, segmentation, as_stored
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # opened per process (DataLoader workers)

    def stored(self) -> PackedDataset:
        """The same samples in the pack's own dtypes (uint16 images, uint8 masks…): what the trainer
        copies to the device, where training/device_batches.py converts them in batch."""
        return PackedDataset(self.pack, self.segmentation, as_stored=True)

    def __len__(self) -> int:
        return self.pack.samples

    @functools.cached_property
    def files(self) -> list[Path]:
        """The sample's source files (setup's data checks name the file a problem is in)."""
        return self.pack.source_files()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # a worker maps the files itself

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.load(self.pack.images, mmap_mode="r", allow_pickle=False),
                            np.load(self.pack.targets, mmap_mode="r", allow_pickle=False))
        return self._arrays

    def _still_whole(self) -> None:
        """A pack truncated under a running job would fault on its next page (SIGBUS, no message):
        one stat per batch turns that into a DataError naming the file."""
        images, targets = self.arrays()
        for path, array in ((self.pack.images, images), (self.pack.targets, targets)):
            try:
                size = os.stat(path).st_size
            except OSError:
                continue  # deleted: the open mapping keeps its pages (POSIX), the run can finish
            if size < array.offset + array.nbytes:
                raise DataError(f"{path}: the data pack was truncated while in use ({size} of "
                                f"{array.offset + array.nbytes} bytes); rebuild it with `wf data pack`, then "
                                "continue with --resume")

    def _targets(self, raw: np.ndarray) -> torch.Tensor:
        if self.as_stored:
            return _own(raw)
        return torch.from_numpy(np.array(raw, dtype=np.int64))  # a copy: never a view of the read-only map

    def _floats(self, pixels: np.ndarray) -> torch.Tensor:
        if self.as_stored:
            return _own(pixels)
        """float32 as the per-file path gives it: as stored, or (ImageFolder) uint8 scaled to [0, 1] by
        the very transform the per-file path applies (torchvision's to_dtype), element by element."""
        if not self.pack.scaled:  # a copy of a map's view; a gathered batch is a fresh array already
            copy = not pixels.flags.writeable or pixels.dtype != np.float32
            return torch.from_numpy(np.array(pixels, dtype=np.float32, copy=True) if copy else pixels)
        from torchvision.transforms.v2 import functional

        return functional.to_dtype(torch.from_numpy(np.array(pixels)), torch.float32, scale=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        images, targets = self.arrays()
        image = self._floats(images[index])
        if self.segmentation or self.as_stored:
            return image, self._targets(targets[index])
        return image, int(targets[index])

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        self._still_whole()
        images, targets = self.arrays()
        order = np.asarray(indices, dtype=np.int64)
        return GatheredBatch((self._floats(images[order]), self._targets(targets[order])))

    def target(self, index: int) -> Any:
        _, targets = self.arrays()
        return self._targets(targets[index]) if self.segmentation else int(targets[index])

    def label(self, index: int) -> int:
        if self.segmentation:
            raise TypeError("segmentation samples have masks, not labels")
        return int(self.arrays()[1][index])

    def labels(self) -> list[int]:
        if self.segmentation:
            raise TypeError("segmentation samples have masks, not labels")
        return [int(v) for v in self.arrays()[1]]


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


def _normalized(bundle: DataBundle) -> DataBundle:
    mean, std = channel_statistics(bundle.train)
    shape = (-1,) + (1,) * (len(bundle.input_shape) - 1)
    m, s = mean.float().reshape(shape), std.float().reshape(shape)
    wrap = lambda ds: NormalizedDataset(ds, m, s) if ds is not None else None  # noqa: E731
    return DataBundle(wrap(bundle.train), wrap(bundle.val), wrap(bundle.test), bundle.num_classes,
                      bundle.input_shape, bundle.source + ", normalised per channel",
                      {"mean": mean.tolist(), "std": std.tolist()}, class_names=bundle.class_names)


class NpzPatchDataset(Dataset):
    """One `.npz` per sample holding an image (C, H, W) — or (H, W, C), detected — and a label."""

    def __init__(self, folder: Path, image_key: str = "image", label_key: str = "label"):
        self.folder = folder
        self.files = sorted(folder.glob("*.npz"))
        self.image_key, self.label_key = image_key, label_key
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (data.path)")
        if not self.files:
            raise DataError(f"{folder}: no .npz files found (data.path)")

    def __len__(self) -> int:
        return len(self.files)

    target_key_setting = "data.label_key"

    def arrays(self, index: int) -> tuple[Path, np.ndarray, np.ndarray]:
        """The file, its image channels first, and its target array as stored."""
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as npz:  # a patch stays data: no pickles
                image, target = npz[self.image_key], npz[self.label_key]
        except KeyError as exc:
            raise DataError(f"{path}: missing array {exc} (data.image_key / {self.target_key_setting})") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot be read as .npz ({exc})") from None
        image = channels_first(image)
        if image.ndim != 3:
            raise DataError(f"{path}: image must have 2 or 3 dimensions, has shape {image.shape}")
        return path, image, np.asarray(target)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        path, image, label = self.arrays(index)
        if np.asarray(label).size != 1:
            raise DataError(f"{path}: label must be a single integer, has shape {np.shape(label)}")
        return image, int(np.asarray(label).reshape(()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.read(index)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), label

    def label(self, index: int) -> int:
        """Only the label: an .npz is a zip, so the image is never decompressed."""
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as npz:
                label = npz[self.label_key]
        except KeyError as exc:
            raise DataError(f"{path}: missing array {exc} (data.label_key)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot be read as .npz ({exc})") from None
        if np.asarray(label).size != 1:
            raise DataError(f"{path}: label must be a single integer, has shape {np.shape(label)}")
        return int(np.asarray(label).reshape(()))

    def labels(self) -> list[int]:
        return [self.label(i) for i in range(len(self))]

    target = label  # what target_reader calls


class NpzMaskDataset(NpzPatchDataset):
    """Segmentation: one `.npz` per sample holding an image and a mask (H, W) of class ids."""

    target_key_setting = "data.mask_key"

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path, image, mask = self.arrays(index)
        return image, mask_of(path, mask, image)

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
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as npz:
                mask = np.asarray(npz[self.label_key])
        except KeyError as exc:
            raise DataError(f"{path}: missing array {exc} ({self.target_key_setting})") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot be read as .npz ({exc})") from None
        if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
            mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
        if not np.issubdtype(mask.dtype, np.integer) and not np.array_equal(mask, np.round(mask)):
            raise DataError(f"{path}: mask holds non-integer values ({mask.dtype}); it must hold class ids")
        return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


def build_data(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    source = cfg.data.source
    if source == "digits":
        bundle = _digits(cfg)
    elif source == "npz":
        bundle = _npz(cfg, project_root)
    elif source == "imagefolder":
        bundle = _imagefolder(cfg, project_root)
    elif source == "csv":
        bundle = _csv(cfg, project_root)
    else:
        bundle = _custom(cfg, project_root)
    for split in ("train", "val"):
        if len(getattr(bundle, split)) == 0:
            raise DataError(f"the {split} split of data source '{source}' is empty (data)")
    names = cfg.data.class_names or bundle.class_names
    if names is not None and len(names) != bundle.num_classes:
        raise DataError(f"data.class_names has {len(names)} names, and the data has {bundle.num_classes} classes"
                        if cfg.data.class_names else
                        f"{cfg.data.path}: {len(names)} class folders, and data.num_classes is {bundle.num_classes}")
    bundle.class_names = list(names) if names is not None else None
    if cfg.data.normalize == "per_channel":
        bundle = _normalized(bundle)
    return bundle


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (real data, offline): images (1797, 8, 8) of 0..16
    and their labels, as `sklearn.datasets.load_digits` gives them.

    Read from the package's data file the way load_digits reads it: importing scikit-learn (which
    imports SciPy) costs 1.6–2 s of every run's start on a 2-core CPU, and runs on digits are the
    short ones. load_digits itself where the file is not where this version keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise DataError("data.source digits needs scikit-learn: pip install scikit-learn")
    data_file = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if data_file.is_file():
        with gzip.open(data_file, mode="rt", encoding="utf-8") as text:
            table = np.loadtxt(text, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _digits(cfg: WorkflowConfig) -> DataBundle:
    pixels, targets = digits_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0  # 0..16 → 0..1
    labels = torch.tensor(targets, dtype=torch.long)
    train_idx, val_idx, test_idx = _stratified_split(labels, cfg.data.val_fraction, cfg.data.test_fraction,
                                                     cfg.data.split_seed)

    def subset(idx: torch.Tensor) -> TensorDataset:
        return TensorDataset(images[idx], labels[idx])

    return DataBundle(subset(train_idx), subset(val_idx), subset(test_idx) if len(test_idx) else None,
                      10, tuple(images.shape[1:]), "digits (scikit-learn, 1797 8×8 images)")


def _stratified_split(labels: torch.Tensor, val_fraction: float, test_fraction: float,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = make_generator(seed)
    train, val, test = [], [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val, n_test = round(len(idx) * val_fraction), round(len(idx) * test_fraction)
        val.append(idx[:n_val])
        test.append(idx[n_val:n_val + n_test])
        train.append(idx[n_val + n_test:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values, torch.cat(test).sort().values


def _resolve_dir(cfg: WorkflowConfig, project_root: Path) -> Path:
    assert cfg.data.path is not None
    root = (project_root / cfg.data.path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (data.path = {cfg.data.path!r})")
    return root


def _npz(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    root = _resolve_dir(cfg, project_root)
    segmentation = cfg.task == "segmentation"
    dataset, target_key = ((NpzMaskDataset, cfg.data.mask_key) if segmentation
                           else (NpzPatchDataset, cfg.data.label_key))
    names = ("train", "val", "test") if (root / "test").is_dir() else ("train", "val")
    splits: dict[str, Dataset] = {s: dataset(root / s, cfg.data.image_key, target_key) for s in names}
    packed = _packed_splits(cfg, project_root, root, names, target_key) if cfg.data.pack != "off" else {}
    splits.update({s: PackedDataset(pack, segmentation) for s, pack in packed.items()})
    sample, _ = splits["train"][0]
    num_classes = cfg.data.num_classes or (max(max(splits[s].labels()) for s in ("train", "val")) + 1)
    how = f", packed ({', '.join(packed)})" if packed else ""
    return DataBundle(splits["train"], splits["val"], splits.get("test"), num_classes, tuple(sample.shape),
                      f"NPZ patches in {cfg.data.path}{how}")


def _packed_splits(cfg: WorkflowConfig, project_root: Path, root: Path, names: tuple[str, ...],
                   target_key: str) -> dict[str, Any]:
    """The splits whose pack matches their files (data.pack auto), or every split, packed now where
    its pack is missing or stale (data.pack on)."""
    from mlflow_core.workflow.datafiles import stat_cache
    from mlflow_core.workflow.packs import build_pack, find_pack, npz_files, pack_key

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


def _pixels(cfg: WorkflowConfig) -> Any:
    """An ImageFolder image as uint8 pixels (C, H, W), resized to data.image_size: what a pack stores."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage()]
    if cfg.data.image_size:
        steps.append(v2.Resize((cfg.data.image_size, cfg.data.image_size), antialias=True))
    return v2.Compose(steps)


def image_channels(cfg: WorkflowConfig, root: Path) -> tuple[int, str]:
    """How many channels ImageFolder images are read with, and why (training/images.py)."""
    if cfg.data.channels:
        return sampled_channels([], cfg.data.channels)
    from torchvision import datasets

    try:
        samples = datasets.ImageFolder(str(root / "train"), loader=lambda p: p).samples
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: not an ImageFolder layout with train/ and val/ class folders ({exc})") from None
    first = list({label: path for path, label in reversed(samples)}.values())  # one of each class first
    return sampled_channels(first + [path for path, _ in samples if path not in set(first)], None)


def _image_folders(cfg: WorkflowConfig, root: Path, transform: Any, channels: int) -> dict[str, Any]:
    """Each split as torchvision's ImageFolder, every image PIL reads in the mode of `channels`
    (image_channels; TIFFs keep their bands)."""
    from torchvision import datasets

    names = ("train", "val", "test") if (root / "test").is_dir() else ("train", "val")
    loader = ImageLoader(MODES[min(channels, 4)])
    try:
        splits = {s: datasets.ImageFolder(str(root / s), transform=transform, loader=loader) for s in names}
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: not an ImageFolder layout with train/ and val/ class folders ({exc})") from None
    if splits["train"].classes != splits["val"].classes:
        raise DataError(f"{root}: train/ and val/ have different class folders")
    return splits


def _imagefolder(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    from torchvision.transforms import v2

    root = _resolve_dir(cfg, project_root)
    channels, why = image_channels(cfg, root)  # once: it opens a sample of the images
    transform = v2.Compose([_pixels(cfg), as_input])
    splits: dict[str, Dataset] = _image_folders(cfg, root, transform, channels)
    classes = list(splits["train"].classes)  # type: ignore[attr-defined]
    packed = {}
    if cfg.data.pack != "off":
        packed = {s: p for s, (p, _) in imagefolder_packs(cfg, project_root, build=cfg.data.pack == "on",
                                                          channels=channels).items() if p is not None}
    splits.update({s: PackedDataset(pack) for s, pack in packed.items()})
    sample, _ = splits["train"][0]
    how = f", packed ({', '.join(packed)})" if packed else ""
    return DataBundle(splits["train"], splits["val"], splits.get("test"), cfg.data.num_classes or len(classes),
                      tuple(sample.shape), f"ImageFolder {cfg.data.path}, channels: {why}{how}",
                      class_names=classes)


def _csv(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    from mlflow_core.training.csv_data import csv_datasets

    root = _resolve_dir(cfg, project_root)
    stored, names, channels = csv_datasets(cfg, root, _pixels(cfg))  # once: it reads every table and file name
    splits = {split: dataset.for_training() for split, dataset in stored.items()}
    packed = {}
    if cfg.data.pack != "off":
        packed = {s: p for s, (p, _) in csv_packs(cfg, project_root, build=cfg.data.pack == "on",
                                                  stored=stored).items() if p is not None}
    segmentation = cfg.task == "segmentation"
    datasets: dict[str, Dataset] = {**splits, **{s: PackedDataset(pack, segmentation) for s, pack in packed.items()}}
    sample, _ = datasets["train"][0]
    if cfg.data.num_classes is not None:
        classes = cfg.data.num_classes
    elif names is not None:
        classes = len(names)
    else:
        classes = 1 + max((t for _, t in splits["train"].samples if isinstance(t, int)), default=0)
    how = f", packed ({', '.join(packed)})" if packed else ""
    return DataBundle(datasets["train"], datasets["val"], datasets.get("test"), classes, tuple(sample.shape),
                      f"CSV {cfg.data.path}, channels: {channels}{how}", class_names=names)


def csv_packs(cfg: WorkflowConfig, project_root: Path, *, build: bool, on_message: Callable[[str], None] | None = None,
              stored: dict[str, Any] | None = None) -> dict[str, tuple[Any, bool]]:
    """Each CSV split's current pack, (pack, built), as imagefolder_packs does it; `stored`: the
    splits as csv_datasets read them, when the caller has them already."""
    from mlflow_core.training.csv_data import csv_datasets, csv_pack_key
    from mlflow_core.workflow.datafiles import stat_cache

    root = _resolve_dir(cfg, project_root)
    cache, out = stat_cache(project_root), {}
    stored = stored or csv_datasets(cfg, root, _pixels(cfg))[0]
    for split, dataset in stored.items():
        names = [Path(p).relative_to(root).as_posix() for p, _ in dataset.samples]
        out[split] = stored_pack(project_root, split, csv_pack_key(cfg, root, split, dataset, cache), root, names,
                                 dataset, build, {"source_kind": "csv", "image_size": cfg.data.image_size,
                                                  "mode": dataset.loader.mode}, on_message)
    cache.save()
    return out


def files_dataset(cfg: WorkflowConfig, project_root: Path, split: str) -> Dataset:
    """A split read from its files, whatever data.pack says (setup compares the two paths)."""
    root = _resolve_dir(cfg, project_root)
    if cfg.data.source == "csv":
        from mlflow_core.training.csv_data import csv_datasets

        return csv_datasets(cfg, root, _pixels(cfg))[0][split].for_training()
    if cfg.data.source == "imagefolder":
        from torchvision.transforms import v2

        return _image_folders(cfg, root, v2.Compose([_pixels(cfg), as_input]), image_channels(cfg, root)[0])[split]
    if cfg.task == "segmentation":
        return NpzMaskDataset(root / split, cfg.data.image_key, cfg.data.mask_key)
    return NpzPatchDataset(root / split, cfg.data.image_key, cfg.data.label_key)


def imagefolder_packs(cfg: WorkflowConfig, project_root: Path, *, build: bool,
                      on_message: Callable[[str], None] | None = None,
                      channels: int | None = None) -> dict[str, tuple[Any, bool]]:
    """Each ImageFolder split's current pack, (pack, built): built where missing or stale when `build`,
    else None there. The key covers every image's bytes and class, data.image_size and the format."""
    import hashlib

    from mlflow_core.workflow.datafiles import stat_cache
    from mlflow_core.workflow.packs import PACK_FORMAT

    root = _resolve_dir(cfg, project_root)
    cache, out = stat_cache(project_root), {}
    channels = channels or image_channels(cfg, root)[0]
    mode = MODES[min(channels, 4)]  # the pack holds the images as read: in this mode
    for split, folder in _image_folders(cfg, root, _pixels(cfg), channels).items():
        digest = hashlib.sha256(f"wf-pack {PACK_FORMAT} imagefolder {cfg.data.image_size} {mode}\n".encode())
        for path, label in folder.samples:
            digest.update(f"{Path(path).relative_to(root / split).as_posix()}\0{label}\0{cache.sha256(path)}\n".encode())
        key = digest.hexdigest()
        names = [Path(p).relative_to(root / split).as_posix() for p, _ in folder.samples]
        pack, built = stored_pack(project_root, split, key, root / split, names, folder, build,
                                  {"source_kind": "imagefolder", "image_size": cfg.data.image_size, "mode": mode},
                                  on_message)
        out[split] = (pack, built)
    cache.save()
    return out


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
    pack = write_pack(project_root, split, key, source, names, read, meta,
                      (lambda done, total: on_message(f"{split}: {done}/{total} images")) if on_message else None,
                      scaled=scaled)
    if on_message:
        on_message(f"{split}: packed in {time.perf_counter() - t0:.1f} s")
    return pack, True


def pack_data(cfg: WorkflowConfig, project_root: Path, on_message: Callable[[str], None] | None = None
              ) -> dict[str, dict[str, Any]]:
    """`wf data pack` for any source (setup's packing): NPZ through workflow/packs.py (no torch),
    ImageFolder decoded once here."""
    from mlflow_core.workflow.packs import describe, pack_project_data

    if cfg.data.source not in ("imagefolder", "csv"):
        return pack_project_data(cfg, project_root, on_message)
    say = on_message or (lambda _m: None)
    packs = imagefolder_packs if cfg.data.source == "imagefolder" else csv_packs
    return {split: describe(project_root, pack, built, 0.0, say)
            for split, (pack, built) in packs(cfg, project_root, build=True, on_message=on_message).items()}


def import_target(target: str, project_root: Path, field: str) -> Callable[..., Any]:
    """Import 'module:attr' with the project directory first on sys.path."""
    module_name, attr = target.split(":", 1)
    root = str(project_root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserInputError(f"{field} = {target!r}: cannot import it from {root} ({exc})") from None
    if not callable(obj):
        raise UserInputError(f"{field} = {target!r} is not callable")
    return obj


def _custom(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    assert cfg.data.target is not None
    factory = import_target(cfg.data.target, project_root, "data.target")
    result = factory(**cfg.data.kwargs)
    if not isinstance(result, dict) or not {"train", "val"} <= set(result):
        got = (f"a dict with keys {', '.join(map(repr, result)) or 'none'}" if isinstance(result, dict)
               else f"a {type(result).__name__}")
        raise DataError(f"data.target {cfg.data.target!r} must return a dict with 'train' and 'val' "
                        f"datasets, and optionally 'test' (it returned {got})")
    sample, _ = result["train"][0]
    num_classes = cfg.data.num_classes or _classes_in(result["train"], result["val"])
    return DataBundle(result["train"], result["val"], result.get("test"), num_classes,
                      tuple(torch.as_tensor(sample).shape), f"custom {cfg.data.target}")


def _classes_in(*splits: Dataset) -> int:
    """data.num_classes left null: one more than the largest label (or mask value) in the splits, as
    for ImageFolder's class folders. Labels are 0-based class indices; setup checks that they are."""
    largest = max((int(torch.as_tensor(t).max()) for split in splits for t in dataset_targets(split)), default=-1)
    if largest < 0:
        raise DataError("data.num_classes is null and the data holds no non-negative label to count the classes "
                        "from: set data.num_classes")
    return largest + 1


def make_loader(dataset: Dataset, cfg: WorkflowConfig, *, train: bool, device: torch.device,
                seed: int, sampler: Any = None, batch_size: int | None = None,
                generator: torch.Generator | None = None) -> DataLoader:
    """`sampler`: a DistributedSampler under DDP (it shuffles; the generator then only seeds workers).
    `batch_size`: a curriculum stage's (default training.batch_size)."""
    pin = cfg.data.pin_memory if cfg.data.pin_memory != "auto" else device.type == "cuda"
    # a packed split is gathered a batch at a time in this process: a worker would only add the copy of
    # every batch through shared memory (3–9× slower on the loader benchmark, bench/README.md)
    workers = 0 if gathers_batches(dataset) else cfg.data.num_workers
    return DataLoader(dataset, batch_size=batch_size or cfg.training.batch_size, shuffle=train and sampler is None,
                      sampler=sampler, drop_last=False, num_workers=workers, pin_memory=bool(pin),
                      worker_init_fn=seed_worker, generator=generator or make_generator(seed),
                      persistent_workers=workers > 0, collate_fn=collate_batches)


def gathers_batches(dataset: Dataset) -> bool:
    """Whether every layer of `dataset` reads a whole batch at once (a pack, normalised or a subset
    of one): then no per-sample work is left for worker processes."""
    while True:
        if isinstance(dataset, PackedDataset):
            return True
        if isinstance(dataset, NormalizedDataset):
            dataset = vars(dataset)["base"]
        elif isinstance(dataset, Subset):
            dataset = dataset.dataset
        else:
            return False


def target_reader(dataset: Dataset) -> Callable[[int], Any]:
    """`read(i)`: sample i's target (a label, or a mask) as stored, read without decoding its input
    where the dataset allows, and never through a transform: a random crop would change the
    pixel counts that sampling weights are made of, and draw from the training RNG."""
    if isinstance(dataset, Subset):
        inner, indices = target_reader(dataset.dataset), dataset.indices
        return lambda i: inner(indices[i])
    if isinstance(dataset, ConcatDataset):
        import bisect
        readers, ends = [target_reader(d) for d in dataset.datasets], dataset.cumulative_sizes

        def read_concat(i: int) -> Any:
            part = bisect.bisect_right(ends, i)
            return readers[part](i - (ends[part - 1] if part else 0))
        return read_concat
    if getattr(type(dataset), "keeps_targets", False):
        return target_reader(vars(dataset)["base"])
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return lambda i: dataset.tensors[1][i]
    if callable(getattr(type(dataset), "target", None)):
        return dataset.target  # type: ignore[attr-defined]
    stored = getattr(dataset, "targets", None)  # torchvision's ImageFolder
    if isinstance(stored, list) and len(stored) == len(dataset):  # type: ignore[arg-type]
        return stored.__getitem__
    return lambda i: dataset[i][1]


def dataset_targets(dataset: Dataset) -> list[Any]:
    read = target_reader(dataset)
    return [read(i) for i in range(len(dataset))]  # type: ignore[arg-type]


def balanced_sample_weights(dataset: Dataset, num_classes: int, mode: str) -> torch.Tensor:
    """Sampling weights over the training split. class_balanced: 1 / the frequency of the sample's
    class. pixel_balanced (segmentation): the mean, over the sample's pixels, of 1 / the frequency of
    the pixel's class, so that images holding rare classes come up more often."""
    targets = dataset_targets(dataset)
    if mode == "class_balanced":
        labels = torch.tensor([int(t) for t in targets])
        counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1)
        return (1.0 / counts)[labels]
    per_sample = torch.stack([torch.bincount(torch.as_tensor(t).flatten().clamp(0, num_classes - 1),
                                             minlength=num_classes).double() for t in targets])
    frequency = (per_sample.sum(0) / per_sample.sum()).clamp_min(1e-12)
    share = per_sample / per_sample.sum(1, keepdim=True).clamp_min(1)
    return (share / frequency).sum(1)


class DistributedWeightedSampler(Sampler[int]):
    """WeightedRandomSampler for several processes. Every rank draws the same
    ceil(n / world_size) × world_size indices, with replacement, from one generator seeded by
    seed + epoch (set_epoch, as for DistributedSampler), and takes every world_size-th from its rank
    on: the ranks share one weighted draw, each its own part, and an epoch's draw depends on nothing
    but its number, so a resume mid-epoch draws it again."""

    def __init__(self, weights: torch.Tensor, num_replicas: int, rank: int, seed: int):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = -(-len(self.weights) // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True,
                                  generator=generator)
        return iter(drawn[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
