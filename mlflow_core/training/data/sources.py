"""`build_data`: the config's data source as a `DataBundle` of train, val and (optional) test
splits: scikit-learn's digits, NPZ patch folders, ImageFolder, CSV tables (image_sources.py), or
the project's own callable (data.target); per-file or packed, normalised when asked."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.config.section import standard_library
from mlflow_core.errors import DataError, UserInputError
from mlflow_core.training.data.datasets import (
    DataBundle,
    NpzMaskDataset,
    NpzPatchDataset,
    data_folder,
    normalized,
)
from mlflow_core.training.data.image_sources import (
    csv_bundle,
    csv_packs,
    image_channels,
    image_folders,
    imagefolder_bundle,
    imagefolder_packs,
    pixels,
)
from mlflow_core.training.data.packed import PackedDataset
from mlflow_core.training.data.packs import packed_npz_splits
from mlflow_core.training.data.sampling import dataset_targets
from mlflow_core.training.images import as_input
from mlflow_core.training.seeding import make_generator


def build_data(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    source = cfg.data.source
    if source == "digits":
        bundle = _digits(cfg)
    elif source == "npz":
        bundle = _npz(cfg, project_root)
    elif source == "imagefolder":
        bundle = imagefolder_bundle(cfg, project_root)
    elif source == "csv":
        bundle = csv_bundle(cfg, project_root)
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
        bundle = normalized(bundle)
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


def _npz(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    root = data_folder(cfg, project_root)
    segmentation = cfg.task == "segmentation"
    dataset, target_key = ((NpzMaskDataset, cfg.data.mask_key) if segmentation
                           else (NpzPatchDataset, cfg.data.label_key))
    names = ("train", "val", "test") if (root / "test").is_dir() else ("train", "val")
    splits: dict[str, Dataset] = {s: dataset(root / s, cfg.data.image_key, target_key) for s in names}
    packed = packed_npz_splits(cfg, project_root, root, names, target_key) if cfg.data.pack != "off" else {}
    splits.update({s: PackedDataset(pack, segmentation) for s, pack in packed.items()})
    sample, _ = splits["train"][0]
    num_classes = cfg.data.num_classes or (max(max(splits[s].labels()) for s in ("train", "val")) + 1)
    how = f", packed ({', '.join(packed)})" if packed else ""
    return DataBundle(splits["train"], splits["val"], splits.get("test"), num_classes, tuple(sample.shape),
                      f"NPZ patches in {cfg.data.path}{how}", counted_from_labels=cfg.data.num_classes is None)


def files_dataset(cfg: WorkflowConfig, project_root: Path, split: str) -> Dataset:
    """A split read from its files, whatever data.pack says (setup compares the two paths)."""
    root = data_folder(cfg, project_root)
    if cfg.data.source == "csv":
        from mlflow_core.training.csv_data import csv_datasets

        return csv_datasets(cfg, root, pixels(cfg))[0][split].for_training()
    if cfg.data.source == "imagefolder":
        from torchvision.transforms import v2

        return image_folders(cfg, root, v2.Compose([pixels(cfg), as_input]), image_channels(cfg, root)[0])[split]
    if cfg.task == "segmentation":
        return NpzMaskDataset(root / split, cfg.data.image_key, cfg.data.mask_key)
    return NpzPatchDataset(root / split, cfg.data.image_key, cfg.data.label_key)


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
    """Import 'module:attr' with the project directory first on sys.path: a class or a function of the
    project's own code (or of an installed package), never a builtin or a standard-library callable
    (`os:system` would be called with the model's or the data's arguments)."""
    module_name, attr = target.split(":", 1)
    if standard_library(module_name):
        raise UserInputError(f"{field} = {target!r}: {module_name} is Python's standard library, not code of the "
                             "project; a target names a class or factory in a .py file of the project (or an "
                             "installed package)")
    root = str(project_root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserInputError(f"{field} = {target!r}: cannot import it from {root} ({exc})") from None
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        raise UserInputError(f"{field} = {target!r} is a {type(obj).__name__}, not a class or a function of the "
                             "project's code")
    if standard_library(getattr(obj, "__module__", None) or ""):  # re-exported from the standard library
        raise UserInputError(f"{field} = {target!r} is {obj.__module__}.{obj.__qualname__}, from Python's standard "
                             "library, not code of the project")
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
                      tuple(torch.as_tensor(sample).shape), f"custom {cfg.data.target}",
                      counted_from_labels=cfg.data.num_classes is None)


def _classes_in(*splits: Dataset) -> int:
    """data.num_classes left null: one more than the largest label (or mask value) in the splits, as
    for ImageFolder's class folders. Labels are 0-based class indices; setup checks that they are."""
    largest = max((int(torch.as_tensor(t).max()) for split in splits for t in dataset_targets(split)), default=-1)
    if largest < 0:
        raise DataError("data.num_classes is null and the data holds no non-negative label to count the classes "
                        "from: set data.num_classes")
    return largest + 1
