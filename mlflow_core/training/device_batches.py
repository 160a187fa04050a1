"""The packed data path's device side: batches leave the host as they are stored (uint8, uint16
Sentinel-2 digital numbers, float32), are copied to the device ahead of the step on a side stream
(`DeviceFeed`), and become the model's input there, in batch (`BatchPrep`): the dtype conversion,
the per-channel normalisation, and the training split's crops and flips, drawn per sample, with
masks following their images. MixUp and CutMix (callbacks/mixing.py) then act on the device batch.

Where the data are not a pack (per-file datasets, a user's own, a curriculum stage's resized view),
batches come through the DataLoader as model-ready tensors and `BatchPrep` is the identity.

Every random draw comes from torch's global CPU generator, as the per-sample transforms' do in the
training process, so an augmented packed run is deterministic and resumes exactly; and the draws of
a step can be replayed from the generator state taken before them (`KeptBatch`), which is how a
non-finite loss's dump holds the inputs the model saw without keeping them on the device.
Without augmentation, the device path computes what the host path computes, operation for
operation: on the CPU the weights are bit-identical either way (tests/unit/training/test_device_batches.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mlflow_core.config.recipe import AugmentationSection
from mlflow_core.training.augment import TransformedDataset
from mlflow_core.training.data.datasets import NormalizedDataset
from mlflow_core.training.data.packed import PackedDataset

Batch = tuple[torch.Tensor, torch.Tensor]
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, which the per-sample path uses
CROP_TRIES = 10  # as torchvision's: candidates per sample before the centre-crop fallback


class BatchPrep:
    """What turns a stored batch into the model's input, on whatever device the batch is on.

    `scaled`: uint8 pixels that read as value / 255 (an ImageFolder pack); `mean`, `std`: the
    normalisation (C, 1, 1); `crop`: random_resized_crop's size and scale; `hflip`, `vflip`: the flip
    probabilities; `eval_size`: validation's resize and centre crop to the training crop's size."""

    @classmethod
    def none(cls) -> BatchPrep:
        """The prep of batches that arrive model-ready (the host path)."""
        return cls(converts=False)

    def __init__(self, *, scaled: bool = False, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 crop: tuple[int, tuple[float, float]] | None = None, hflip: float = 0.0, vflip: float = 0.0,
                 eval_size: int | None = None, converts: bool = True):
        """`converts`: batches arrive as stored (a pack); False: model-ready already (the identity)."""
        self.scaled, self.converts = scaled, converts
        self.mean, self.std = mean, std
        self.crop, self.hflip, self.vflip, self.eval_size = crop, hflip, vflip, eval_size
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def identity(self) -> bool:
        return not (self.converts or self.mean is not None or self.draws or self.eval_size)

    @property
    def draws(self) -> bool:
        """Whether preparing a batch draws from the generator (the training split's augmentation)."""
        return self.crop is not None or self.hflip > 0 or self.vflip > 0

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> Batch:
        if self.identity:
            return inputs, targets
        if self.converts and targets.dtype != torch.int64:
            targets = targets.long()  # labels and masks travel in the pack's (smaller) dtype
        x = self._floats(inputs)
        if self.mean is not None:
            mean, std = self._statistics(x.device)
            x = (x - mean) / std  # NormalizedDataset's arithmetic, element for element
        if self.crop is not None:
            return self._cropped(x, targets)
        if self.hflip > 0 or self.vflip > 0:
            return self._flipped(x, targets)
        if self.eval_size is not None:
            return self._evaluation_view(x, targets)
        return x, targets

    # --- conversion ----------------------------------------------------------------------------------

    def _floats(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.converts:
            return inputs
        if self.scaled:  # the per-file path's own conversion (torchvision's to_dtype), for equal values
            from torchvision.transforms.v2 import functional

            return functional.to_dtype(inputs, torch.float32, scale=True)
        return inputs.to(torch.float32)

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            assert self.mean is not None and self.std is not None
            self._on[device] = (self.mean.to(device), self.std.to(device))
        return self._on[device]

    # --- augmentation --------------------------------------------------------------------------------

    def _flip_draws(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.rand(n) < self.hflip if self.hflip > 0 else torch.zeros(n, dtype=torch.bool)
        v = torch.rand(n) < self.vflip if self.vflip > 0 else torch.zeros(n, dtype=torch.bool)
        return h, v

    def _flipped(self, x: torch.Tensor, targets: torch.Tensor) -> Batch:
        """Flips per sample, exact (no resampling): a flipped sample is its pixels in mirrored order."""
        h, v = self._flip_draws(x.shape[0])
        h, v = h.to(x.device, non_blocking=True), v.to(x.device, non_blocking=True)
        x = torch.where(h.view(-1, 1, 1, 1), x.flip(-1), x)
        x = torch.where(v.view(-1, 1, 1, 1), x.flip(-2), x)
        if targets.ndim == 3:  # masks (N, H, W) follow their images
            targets = torch.where(h.view(-1, 1, 1), targets.flip(-1), targets)
            targets = torch.where(v.view(-1, 1, 1), targets.flip(-2), targets)
        return x, targets

    def _crop_boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """(n, 4) boxes (top, left, h, w): torchvision's RandomResizedCrop.get_params for n samples at
        once: up to ten candidates of a random area share and log-uniform aspect ratio, the first that
        fits, else the centre crop of the allowed aspect ratio."""
        assert self.crop is not None
        low, high = self.crop[1]
        area = height * width
        log_ratio = torch.log(torch.tensor(CROP_RATIO, dtype=torch.float64))
        target_area = area * torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(low, high)
        aspect = torch.exp(torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(log_ratio[0], log_ratio[1]))
        w = torch.round(torch.sqrt(target_area * aspect)).long()
        h = torch.round(torch.sqrt(target_area / aspect)).long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
        rows = torch.arange(n)
        h_pick, w_pick = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
        in_ratio = width / height
        if in_ratio < CROP_RATIO[0]:
            fh, fw = round(width / CROP_RATIO[0]), width
        elif in_ratio > CROP_RATIO[1]:
            fh, fw = height, round(height * CROP_RATIO[1])
        else:
            fh, fw = height, width
        fallback = first < 0
        h_pick = torch.where(fallback, torch.full_like(h_pick, fh), h_pick)
        w_pick = torch.where(fallback, torch.full_like(w_pick, fw), w_pick)
        u = torch.rand(n, 2, dtype=torch.float64)
        top = torch.where(fallback, (height - h_pick) // 2, (u[:, 0] * (height - h_pick + 1)).floor().long())
        left = torch.where(fallback, (width - w_pick) // 2, (u[:, 1] * (width - w_pick + 1)).floor().long())
        return torch.stack([top, left, h_pick, w_pick], 1)

    def _cropped(self, x: torch.Tensor, targets: torch.Tensor) -> Batch:
        """Random resized crops (and flips) per sample as one resampling of the batch: each sample's
        box and mirroring is an affine map of the output grid (torch's affine_grid), images sampled
        bilinearly, masks by nearest neighbour. Pixel centres as torchvision's resize (align_corners
        off); no antialiasing, which matters only where a crop is larger than the output."""
        assert self.crop is not None
        n, _, height, width = x.shape
        size = self.crop[0]
        boxes = self._crop_boxes(n, height, width).double()
        h_flip, v_flip = self._flip_draws(n)
        top, left, h, w = boxes.unbind(1)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = torch.where(h_flip, -w / width, w / width)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = torch.where(v_flip, -h / height, h / height)
        theta[:, 1, 2] = (2 * top + h) / height - 1
        theta = theta.to(x.device, torch.float32, non_blocking=True)
        grid = torch.nn.functional.affine_grid(theta, [n, 1, size, size], align_corners=False)
        out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if targets.ndim == 3:
            mask = torch.nn.functional.grid_sample(targets[:, None].float(), grid, mode="nearest",
                                                   padding_mode="border", align_corners=False)
            targets = mask[:, 0].round().to(targets.dtype)
        return out, targets

    def _evaluation_view(self, x: torch.Tensor, targets: torch.Tensor) -> Batch:
        """Validation at the training crop's size: the per-sample path's Resize + CenterCrop, in batch
        (masks by nearest neighbour, as torchvision resizes a Mask)."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional

        size = self.eval_size
        assert size is not None
        x = functional.center_crop(functional.resize(x, size, antialias=True), size)
        if targets.ndim == 3:
            mask = functional.center_crop(functional.resize(tv_tensors.Mask(targets), size), size)
            targets = mask.as_subclass(torch.Tensor)
        return x, targets


@dataclass
class KeptBatch:
    """A micro-batch as stored on the host, and the generator state its preparation and mixing drew
    from: enough to rebuild the inputs the model saw (`replayed`), for the non-finite dump."""
    inputs: torch.Tensor
    targets: torch.Tensor
    draws_from: torch.Tensor | None


def replayed(kept: KeptBatch, prepare: Callable[[torch.Tensor, torch.Tensor], Batch]) -> Batch:
    """The model's input of a kept micro-batch, prepared again on the CPU with the same draws (bilinear
    crops may differ from the device's in the last bits)."""
    if kept.draws_from is None:
        return prepare(kept.inputs, kept.targets)
    with torch.random.fork_rng(devices=[]):  # the run's own generator state is left as it is
        torch.set_rng_state(kept.draws_from)
        return prepare(kept.inputs, kept.targets)


# --- the packed view of a split ----------------------------------------------------------------------


def device_view(dataset: Dataset, *, aug: AugmentationSection | None = None,
                eval_size: int | None = None) -> tuple[Dataset, BatchPrep] | None:
    """`dataset` read as stored, and the prep that makes its batches what it gives, when it is a
    pack (under its normalisation and subsets); None otherwise, and the batches take the host path.

    `aug`: the training split's augmentation, whose per-sample crops and flips (with_augmentation's
    wrapper) become the prep's, in batch. `eval_size`: the training crop's size, to which
    with_augmentation resizes and centre-crops validation where the crop changes the data's size."""
    per_sample = aug is not None and bool(aug.random_resized_crop or aug.horizontal_flip or aug.vertical_flip)
    wrapped = isinstance(dataset, TransformedDataset)
    if wrapped:  # with_augmentation's wrapper; any other transform (a curriculum stage's) stays per sample
        if not (per_sample or (aug is None and eval_size)):
            return None
        dataset = vars(dataset)["base"]
    elif per_sample:
        return None
    mean = std = None
    if isinstance(dataset, NormalizedDataset):
        mean, std = dataset.mean, dataset.std
        dataset = vars(dataset)["base"]
    subsets: list[list[int]] = []
    while isinstance(dataset, Subset):
        subsets.append(list(dataset.indices))
        dataset = dataset.dataset
    if not isinstance(dataset, PackedDataset):
        return None
    raw: Dataset = dataset.stored()
    for indices in reversed(subsets):
        raw = Subset(raw, indices)
    crop = None
    if aug is not None and aug.random_resized_crop:
        crop = (aug.random_resized_crop, (float(aug.crop_scale[0]), float(aug.crop_scale[1])))
    prep = BatchPrep(scaled=dataset.pack.scaled, mean=mean, std=std, crop=crop,
                     hflip=aug.horizontal_flip if aug is not None else 0.0,
                     vflip=aug.vertical_flip if aug is not None else 0.0,
                     eval_size=eval_size if wrapped and aug is None else None)
    return raw, prep


# --- ahead of the step -------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A batch as the loader gave it (`host_*`, kept for replays) and on the training device."""
    host_inputs: torch.Tensor
    host_targets: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    ready: Any = None  # a CUDA event: the copy has landed


class DeviceFeed:
    """The loader's batches, on the device. On CUDA, `depth` batches are copied ahead on a side
    stream (pinned host memory: the copy overlaps the previous steps' compute), and the step's stream
    waits for its batch's copy alone. Elsewhere the batches pass through as they are (a CPU run's
    'device' is the host)."""

    def __init__(self, batches: Iterator[Batch], device: torch.device, depth: int = 2):
        self.batches, self.device, self.depth = batches, device, max(1, depth)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ahead: deque[Loaded] = deque()

    def __iter__(self) -> DeviceFeed:
        return self

    def skip(self, n: int) -> None:
        """Draw and drop `n` batches (a resume inside an epoch) without copying them."""
        assert not self.ahead, "skip before the first batch"
        for _ in range(n):
            next(self.batches)

    def drain(self) -> None:
        """Run the loader's iterator to its end, copying nothing (see loop.py: the sampler's last draw)."""
        self.ahead.clear()
        for _ in self.batches:
            pass

    def __next__(self) -> Loaded:
        if self.stream is None:
            inputs, targets = next(self.batches)
            return Loaded(inputs, targets, inputs.to(self.device), targets.to(self.device))
        while len(self.ahead) < self.depth:
            try:
                inputs, targets = next(self.batches)
            except StopIteration:
                break
            self.ahead.append(self._copy(inputs, targets))
        if not self.ahead:
            raise StopIteration
        loaded = self.ahead.popleft()
        current = torch.cuda.current_stream(self.device)
        current.wait_event(loaded.ready)
        # the tensors were made on the side stream: their memory must not be reused before the
        # step's stream is done with them
        loaded.inputs.record_stream(current)
        loaded.targets.record_stream(current)
        return loaded

    def _copy(self, inputs: torch.Tensor, targets: torch.Tensor) -> Loaded:
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            on_device = (inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True))
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return Loaded(inputs, targets, *on_device, ready=ready)


def steps_ahead(device: torch.device) -> int:
    """Copies in flight ahead of the step: two on CUDA (one landing while one is ready), none elsewhere."""
    return 2 if device.type == "cuda" else 1
