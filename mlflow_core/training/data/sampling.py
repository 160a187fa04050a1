"""What sampling is made of: each sample's target read without decoding its input, balanced
sampling weights, and the weighted sampler shared by the ranks of a DDP run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset, TensorDataset


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
