"""k-fold cross-validation and ensembles (seed 004: 5 folds × 3 seeds, averaged predictions).

The folds split the training and validation samples together (the test split stays apart);
classification folds are stratified, so that each fold's validation part has the classes in their
overall proportions. An ensemble averages its members' class probabilities."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from mlflow_core.training.data import DataBundle


def pooled(bundle: DataBundle) -> Dataset:
    return ConcatDataset([bundle.train, bundle.val])


def sample_labels(dataset: Dataset) -> list[int] | None:
    """Each sample's class, for stratification; None for masks (segmentation)."""
    labels = []
    for i in range(len(dataset)):
        target = dataset[i][1]
        if isinstance(target, torch.Tensor) and target.ndim >= 1:
            return None
        labels.append(int(target))
    return labels


def kfold_indices(n: int, folds: int, seed: int, labels: list[int] | None = None) -> list[list[int]]:
    """The validation indices of each fold: disjoint, covering 0..n−1, sizes within one of each
    other (within a class, when stratified by `labels`)."""
    if folds > n:
        from mlflow_core.errors import UserInputError
        raise UserInputError(f"finalization.folds {folds} is more than the {n} samples to split.")
    generator = torch.Generator().manual_seed(seed)
    groups = [list(range(n))] if labels is None else [
        [i for i in range(n) if labels[i] == c] for c in sorted(set(labels))]
    out: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for group in groups:
        order = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        for j, index in enumerate(order):  # round-robin, continuing across classes: sizes stay balanced
            out[(offset + j) % folds].append(index)
        offset += len(order)
    return [sorted(f) for f in out]


def fold_bundle(bundle: DataBundle, data: Dataset, validation: list[int]) -> DataBundle:
    """The bundle with fold `validation` held out of the pooled samples `data` and the rest trained on."""
    held = set(validation)
    train = [i for i in range(len(data)) if i not in held]
    return dataclasses.replace(bundle, train=Subset(data, train), val=Subset(data, sorted(validation)),
                               augmented=False)


def ensemble_log_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the members' mean class probabilities: the ensemble's "logits" (softmax gives back
    the mean probabilities, so NLL and calibration are the ensemble's own)."""
    probabilities = torch.stack([x.float().softmax(1) for x in logits]).mean(0)
    return probabilities.clamp_min(1e-12).log()


def fold_data(cfg, project_root, folds: int, fold: int) -> DataBundle:
    """Fold `fold` of `folds` of the project's data, augmented as configured: the same on every
    rank of a data-parallel run (each builds it from the config)."""
    from mlflow_core.training.augment import with_augmentation
    from mlflow_core.training.data import build_data

    raw = build_data(cfg, project_root)
    samples = pooled(raw)
    validation = kfold_indices(len(samples), folds, cfg.data.split_seed, sample_labels(samples))[fold]
    return with_augmentation(fold_bundle(raw, samples, validation), cfg.augmentation)
