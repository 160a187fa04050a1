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
            for key in keys:
                _check_header(path, npz.zip, key)
            return [np.asarray(npz[key]) for key in keys]
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc} ({settings})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc})") from None


def _check_header(path: Path, archive: zipfile.ZipFile, key: str) -> None:
    """An array's header against the bytes the archive holds for it, before numpy allocates what the
    header claims: a header may say 224 GiB in a file of a few hundred bytes."""
    import numpy as np

    name = f"{key}.npy"
    if name not in archive.namelist():
        return  # np.load names the missing key
    info = archive.getinfo(name)
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            return  # a format numpy added later: its own reader checks it
        shape, _, dtype = read(member)
        header = member.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} holds Python objects; an .npz sample holds numbers only")
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    held = info.file_size - header
    if claimed > held:
        raise DataError(f"{path}: array {key!r} claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but the "
                        f"file holds {max(held, 0):,}; the file is damaged or not what it says")


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
    """A classification label as stored: a 0-d array of its own dtype, holding a whole number."""
    if label.size != 1:
        raise DataError(f"{path}: label must be a single integer, has shape {label.shape}")
    label = label.reshape(())
    if label.dtype.kind == "f" and float(label).is_integer():
        return label
    if label.dtype.kind not in "iu":
        value = label.item()
        what = {"f": "not a whole number", "U": "text", "S": "text", "b": "a boolean"}.get(label.dtype.kind,
                                                                                         f"of type {label.dtype}")
        raise DataError(f"{path}: label {value!r} is {what}; a label is a 0-based integer class id")
    return label


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
