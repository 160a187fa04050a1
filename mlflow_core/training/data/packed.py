"""A split read from its pack (workflow/packs.py): a batch is one gather from memory-mapped arrays."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlflow_core.errors import DataError


class GatheredBatch(tuple):
    """(inputs, targets) of a whole batch, gathered at once by a dataset's `__getitems__`: the
    loader's collate passes it through (collate_batches)."""


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

    @functools.cached_property
    def mask_files(self) -> list[Path] | None:
        return self.pack.source_mask_files()

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
