"""Image files as data sources: torchvision's ImageFolder layout and CSV tables of image files,
each read per file or from its pack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import DataError
from mlflow_core.training.data.datasets import DataBundle, data_folder
from mlflow_core.training.data.packed import PackedDataset
from mlflow_core.training.data.packs import stored_pack
from mlflow_core.training.images import MODES, ImageLoader, as_input, sampled_channels


def pixels(cfg: WorkflowConfig) -> Any:
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


def image_folders(cfg: WorkflowConfig, root: Path, transform: Any, channels: int) -> dict[str, Any]:
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


def imagefolder_bundle(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    from torchvision.transforms import v2

    root = data_folder(cfg, project_root)
    channels, why = image_channels(cfg, root)  # once: it opens a sample of the images
    transform = v2.Compose([pixels(cfg), as_input])
    splits: dict[str, Dataset] = image_folders(cfg, root, transform, channels)
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


def imagefolder_packs(cfg: WorkflowConfig, project_root: Path, *, build: bool,
                      on_message: Callable[[str], None] | None = None,
                      channels: int | None = None) -> dict[str, tuple[Any, bool]]:
    """Each ImageFolder split's current pack, (pack, built): built where missing or stale when `build`,
    else None there. The key covers every image's bytes and class, data.image_size and the format."""
    import hashlib

    from mlflow_core.workflow.datafiles import stat_cache
    from mlflow_core.workflow.packs import PACK_FORMAT

    root = data_folder(cfg, project_root)
    cache, out = stat_cache(project_root), {}
    channels = channels or image_channels(cfg, root)[0]
    mode = MODES[min(channels, 4)]  # the pack holds the images as read: in this mode
    for split, folder in image_folders(cfg, root, pixels(cfg), channels).items():
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


def csv_bundle(cfg: WorkflowConfig, project_root: Path) -> DataBundle:
    from mlflow_core.training.csv_data import csv_datasets

    root = data_folder(cfg, project_root)
    stored, names, channels = csv_datasets(cfg, root, pixels(cfg))  # once: it reads every table and file name
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

    root = data_folder(cfg, project_root)
    cache, out = stat_cache(project_root), {}
    stored = stored or csv_datasets(cfg, root, pixels(cfg))[0]
    for split, dataset in stored.items():
        names = [Path(p).relative_to(root).as_posix() for p, _ in dataset.samples]
        # a mask file of its own per sample (segmentation): named by the messages about a mask
        masks = [Path(m).relative_to(root).as_posix() for m in dataset.mask_files if m is not None]
        out[split] = stored_pack(project_root, split, csv_pack_key(cfg, root, split, dataset, cache), root, names,
                                 dataset, build, {"source_kind": "csv", "image_size": cfg.data.image_size,
                                                  "mode": dataset.loader.mode,
                                                  **({"mask_names": masks} if masks else {})}, on_message)
    cache.save()
    return out
