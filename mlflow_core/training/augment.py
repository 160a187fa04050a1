"""Training-split augmentation with torchvision transforms v2: per-sample crops and flips, and
per-batch MixUp / CutMix with their switch-off for the last epochs.

Every random draw comes from torch's generators (the global one, or a worker's, seeded from the
loader's generator), so an augmented run is as reproducible, and as exactly resumable, as a plain one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils.data import Dataset

from mlflow_core.config.recipe import AugmentationSection
from mlflow_core.errors import UserInputError
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.host_reads import host_scalar


class TransformedDataset(Dataset):
    """`transform(x)` on the fly; other attributes (files, labels()) pass through to the base."""

    keeps_targets = True  # target_reader reads the base's stored targets, not transformed ones

    def __init__(self, base: Dataset, transform: Any):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        inputs, label = self.base[index]
        if isinstance(label, torch.Tensor) and label.ndim >= 2:  # a mask moves with its image
            from torchvision import tv_tensors
            image, mask = self.transform(torch.as_tensor(inputs), tv_tensors.Mask(label))
            return image, mask.as_subclass(torch.Tensor)
        return self.transform(torch.as_tensor(inputs)), label

    def __getattr__(self, name: str) -> Any:
        # not set yet (unpickling in a worker): no recursion; dunders (the DataLoader's __getitems__)
        # are never the base's, which would skip the augmentation
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def with_augmentation(bundle: DataBundle, aug: AugmentationSection) -> DataBundle:
    """The bundle with its training split augmented. With random_resized_crop at a size other than
    the data's, validation and test are resized and centre-cropped to it (the usual evaluation view)."""
    if bundle.augmented:
        return bundle
    steps: list[Any] = []
    shape = tuple(bundle.input_shape)
    wants_image = aug.random_resized_crop or aug.horizontal_flip or aug.vertical_flip or aug.mixing
    if wants_image and not _is_image(shape):
        raise UserInputError(f"augmentation: crops, flips, MixUp and CutMix need image samples (channels, height, "
                             f"width); this data's samples have shape {list(shape)}.")
    if not (aug.random_resized_crop or aug.horizontal_flip or aug.vertical_flip):
        # no per-sample step: torchvision (3.5 s to import on a 2-core CPU: its ops load dynamo) stays out
        return dataclasses.replace(bundle, augmented=True)
    from torchvision.transforms import v2

    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(aug.random_resized_crop, scale=tuple(aug.crop_scale), antialias=True))
    if aug.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(aug.horizontal_flip))
    if aug.vertical_flip:
        steps.append(v2.RandomVerticalFlip(aug.vertical_flip))
    train = TransformedDataset(bundle.train, v2.Compose(steps))
    size = aug.random_resized_crop
    if size and tuple(shape[1:]) != (size, size):
        evaluation = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        val = TransformedDataset(bundle.val, evaluation)
        test = TransformedDataset(bundle.test, evaluation) if bundle.test is not None else None
        shape = (shape[0], size, size)
    else:
        val, test = bundle.val, bundle.test
    return dataclasses.replace(bundle, train=train, val=val, test=test, input_shape=shape, augmented=True)


class BatchMixer:
    """MixUp and/or CutMix on a training batch (labels become class probabilities), on a share of
    the batches, and not at all in the last `mix_off_last_fraction` of the epochs. For masks, CutMix
    alone: the box pasted into an image is pasted into its mask too, which stays class ids."""

    def __init__(self, aug: AugmentationSection, num_classes: int, epochs: int, input_shape: tuple[int, ...]):
        from torchvision.transforms import v2

        if not _is_image(tuple(input_shape)):
            raise UserInputError(f"augmentation: MixUp and CutMix need image samples; this data's samples have "
                                 f"shape {list(input_shape)}.")
        choices: list[Any] = []
        if aug.mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
        if aug.cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
        self.transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.cutmix = next((c for c in choices if isinstance(c, v2.CutMix)), None)
        self.probability, self.num_classes = aug.mix_probability, num_classes
        # epochs 1..last_epoch are mixed; e.g. 100 epochs with 0.1 off: 1..90
        self.last_epoch = epochs - math.floor(epochs * aug.mix_off_last_fraction + 1e-9)

    def active(self, epoch: int) -> bool:
        return epoch <= self.last_epoch

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probability < 1.0 and host_scalar(torch.rand(())) >= self.probability:
            return inputs, targets
        if targets.ndim >= 2 and not targets.dtype.is_floating_point:
            return self._cut_with_masks(inputs, targets)
        if targets.ndim == 1:
            # class probabilities made here: torchvision's one_hot checks the labels' range, a read of
            # the device per step; the values are the same (the labels were checked at setup)
            targets = torch.zeros(targets.shape[0], self.num_classes, device=targets.device).scatter_(
                1, targets[:, None], 1.0)
        return self.transform(inputs, targets)

    def _cut_with_masks(self, inputs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CutMix for segmentation: torchvision's CutMix draws the box (its own algorithm and draws), and
        each sample takes that box of its neighbour in the batch (as torchvision pairs them), image and
        mask alike, on whatever device the batch is."""
        assert self.cutmix is not None  # the config refuses MixUp for masks
        x1, y1, x2, y2 = self.cutmix.make_params([inputs])["box"]
        mixed, cut = inputs.clone(), masks.clone()
        mixed[..., y1:y2, x1:x2] = inputs.roll(1, 0)[..., y1:y2, x1:x2]
        cut[..., y1:y2, x1:x2] = masks.roll(1, 0)[..., y1:y2, x1:x2]
        return mixed, cut


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices (or masks of them), also for mixed batches whose targets are class probabilities."""
    return targets.argmax(1) if targets.dtype.is_floating_point else targets
