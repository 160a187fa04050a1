"""Image files as the datasets read them, whatever folder or table names them: PNG, JPEG and the
other formats PIL reads, in one mode for the whole dataset (the images' own channels by default,
`data.channels` to force them), and TIFF / GeoTIFF (`.tif`, `.tiff`) with tifffile, any band
count and dtype, channels first. Pixels become the model's input as ImageFolder's do: uint8 scaled
to [0, 1] (torchvision's to_dtype), any other dtype (uint16 digital numbers, float reflectances) as
stored, like NPZ patches; `data.normalize: per_channel` then puts every band on one scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlflow_core.errors import DataError

TIFF = (".tif", ".tiff")
# PIL modes by the channels they hold; every image is read in one mode, the images' own by default
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
CHANNELS_OF_MODE = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "La": 2, "PA": 4, "RGB": 3, "YCbCr": 3,
                    "LAB": 3, "HSV": 3, "P": 3, "CMYK": 3, "RGBA": 4, "RGBa": 4}
CHANNEL_SAMPLE = 64  # images whose mode decides the channels (the first of each class, then in order)


def read_tiff(path: str | Path) -> np.ndarray:
    """A TIFF's first image as (C, H, W) in its own dtype: a (H, W) band gets one channel, and a
    (H, W, C) image with fewer channels than rows is moved (the NPZ rule)."""
    import tifffile

    from mlflow_core.workflow.npz import channels_first

    try:
        array = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError …
        raise DataError(f"{path}: not a TIFF tifffile can read ({type(exc).__name__}: {exc})") from None
    array = channels_first(np.asarray(array))
    if array.ndim != 3:
        raise DataError(f"{path}: a TIFF image must have 2 or 3 dimensions, has shape {array.shape}")
    return np.ascontiguousarray(array)


class ImageLoader:
    """ImageFolder's loader: TIFF through tifffile (a tensor, channels first, as stored), any other
    image through PIL in one mode (torchvision's own converts all to RGB: grayscale digits became
    three equal channels). A class, not a closure: worker processes pickle it."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str) -> Any:
        if path.lower().endswith(TIFF):
            return torch.from_numpy(read_tiff(path))
        from PIL import Image

        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


def read_mask(path: str | Path) -> np.ndarray:
    """A segmentation mask file as (H, W) class ids: a TIFF, or an image PIL reads (L, P or I)."""
    if str(path).lower().endswith(TIFF):
        mask = read_tiff(path)
        if mask.shape[0] != 1:
            raise DataError(f"{path}: a mask holds one band of class ids, this TIFF has {mask.shape[0]}")
        return mask[0]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("1", "L", "P", "I", "I;16"):
                raise DataError(f"{path}: a mask holds one band of class ids, this image is {image.mode}")
            return np.asarray(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not an image PIL can read ({exc})") from None


def channels_of(path: str) -> tuple[int, str]:
    """A file's channel count and how it is read (the PIL mode, or 'TIFF')."""
    if path.lower().endswith(TIFF):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception as exc:
            raise DataError(f"{path}: not a TIFF tifffile can read ({exc})") from None
        channels = 1 if len(shape) == 2 else (shape[-1] if shape[-1] < shape[0] and shape[-1] <= 32 else shape[0])
        return channels, "TIFF"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = "PA" if image.mode == "P" and "transparency" in image.info else image.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not an image PIL can read ({exc})") from None
    return CHANNELS_OF_MODE.get(mode, 3), mode


def sampled_channels(paths: list[str], forced: int | None) -> tuple[int, str]:
    """How many channels the images are read with, and why: data.channels when set, else the
    images' own (the most any of a sample has: a grayscale set with a few RGB files is RGB)."""
    if forced:
        return forced, f"{forced} (data.channels)"
    modes: dict[str, int] = {}
    channels = 0
    for path in paths[:CHANNEL_SAMPLE]:
        count, mode = channels_of(path)
        modes[mode] = modes.get(mode, 0) + 1
        channels = max(channels, count)
    seen = ", ".join(f"{m} {n}" for m, n in sorted(modes.items(), key=lambda kv: -kv[1]))
    return channels or 3, f"{channels or 3}, the images' own ({seen} of {min(len(paths), CHANNEL_SAMPLE)} sampled)"


def as_input(image: torch.Tensor) -> torch.Tensor:
    """Pixels as the model's input: uint8 scaled to [0, 1] as torchvision does it, else as stored."""
    from torchvision.transforms.v2 import functional

    return functional.to_dtype(image, torch.float32, scale=image.dtype == torch.uint8)
