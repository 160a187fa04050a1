"""The one reader of NPZ samples: one `.npz` per sample holding an image and a label (or a
segmentation mask). The per-file datasets (training/data/datasets.py) and the pack writer
(workflow/packs.py) both read through it, so that a sample reads the same on either path and a bad
file gets the same message. No pickles: a patch stays data. Nothing here imports torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from mlflow_core.errors import DataError


def npz_files(folder: Path) -> list[Path]:
    """The samples of a split, in the order the per-file dataset reads them."""
    return sorted(folder.glob("*.npz"))


def load_arrays(path: Path, keys: tuple[str, ...], settings: str) -> list[Any]:
    """The arrays stored under `keys`, decompressing only those (an .npz is a zip). `settings`
    names the config fields the keys come from, for the message when one is missing."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return [np.asarray(npz[key]) for key in keys]
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc} ({settings})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc})") from None


def channels_first(image: Any) -> Any:
    """An NPZ image as the trainer reads it: (C, H, W); (H, W) gets one channel, (H, W, C) with
    few channels is moved."""
    import numpy as np

    if image.ndim == 2:
        image = image[None]
    if image.ndim == 3 and image.shape[-1] < image.shape[0] and image.shape[-1] <= 32:
        image = np.moveaxis(image, -1, 0)
    return image


def image_of(path: Path, image: Any) -> Any:
    image = channels_first(image)
    if image.ndim != 3:
        raise DataError(f"{path}: image must have 2 or 3 dimensions, has shape {image.shape}")
    return image


def label_of(path: Path, label: Any) -> Any:
    """A classification label as stored: a 0-d array of its own dtype."""
    if label.size != 1:
        raise DataError(f"{path}: label must be a single integer, has shape {label.shape}")
    return label.reshape(())


def mask_of(path: Path, mask: Any, image: Any = None) -> Any:
    """A segmentation mask as the trainer reads it: (H, W) class ids, a singleton channel dropped,
    the image's height and width (checked when the image is given)."""
    import numpy as np

    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
    if image is not None and mask.shape != image.shape[1:]:
        raise DataError(f"{path}: mask has shape {mask.shape}, the image's height and width are "
                        f"{image.shape[1:]}; a mask holds one class id per pixel")
    if not np.issubdtype(mask.dtype, np.integer) and not np.array_equal(mask, np.round(mask)):
        raise DataError(f"{path}: mask holds non-integer values ({mask.dtype}); it must hold class ids")
    return mask


def target_setting(segmentation: bool) -> str:
    return "data.mask_key" if segmentation else "data.label_key"


def read_sample(path: Path, image_key: str, target_key: str, segmentation: bool) -> tuple[Any, Any]:
    """The sample: its image channels first and its label (a 0-d array) or mask (H, W), as stored."""
    image, target = load_arrays(path, (image_key, target_key), f"data.image_key / {target_setting(segmentation)}")
    image = image_of(path, image)
    return image, (mask_of(path, target, image) if segmentation else label_of(path, target))


def read_target(path: Path, target_key: str, segmentation: bool) -> Any:
    """Only the label or mask: the image is never decompressed."""
    (target,) = load_arrays(path, (target_key,), target_setting(segmentation))
    return mask_of(path, target) if segmentation else label_of(path, target)
