"""k-fold cross-validation and ensembles (e.g. 5 folds × 3 seeds, averaged predictions, as Kaggle workflows do).

The folds split the training and validation samples together (the test split stays apart);
classification folds are stratified, so that each fold's validation part has the classes in their
overall proportions. An ensemble averages its members' class probabilities."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from mlflow_core.errors import UserInputError
from mlflow_core.training.augment import with_augmentation
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.sampling import target_reader
from mlflow_core.training.data.sources import build_data


def pooled(bundle: DataBundle) -> Dataset:
    return ConcatDataset([bundle.train, bundle.val])


def sample_labels(bundle: DataBundle) -> list[int] | None:
    """The class of each pooled sample (train, then val), for stratification; None for masks
    (segmentation). Targets are read without decoding images where the dataset allows."""
    read = target_reader(pooled(bundle))
    first = read(0)
    if isinstance(first, torch.Tensor) and first.ndim >= 1:
        return None
    return [int(read(i)) for i in range(len(bundle.train) + len(bundle.val))]


def kfold_indices(n: int, folds: int, seed: int, labels: list[int] | None = None) -> list[list[int]]:
    """The validation indices of each fold: disjoint, covering 0..n−1, sizes within one of each
    other (within a class, when stratified by `labels`)."""
    if folds > n:
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


_SPLITS: dict[tuple, tuple[DataBundle, Dataset, bool, list[list[int]]]] = {}


def split_folds(cfg: Any, project_root: Path, folds: int) -> tuple[DataBundle, Dataset, bool, list[list[int]]]:
    """The project's data unaugmented, its pooled train and val samples, whether the folds are
    stratified, and each fold's validation indices. Kept for the process: the ranks of a
    data-parallel run, and the members of one finalization, split once."""

    key = (json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True), cfg.task, str(project_root), folds)
    if key not in _SPLITS:
        raw = build_data(cfg, project_root)  # before augmentation: a fold's validation part is never augmented
        labels = sample_labels(raw)
        samples = pooled(raw)
        _SPLITS[key] = (raw, samples, labels is not None,
                        kfold_indices(len(samples), folds, cfg.data.split_seed, labels))
    return _SPLITS[key]


def fold_data(cfg: Any, project_root: Path, folds: int, fold: int) -> DataBundle:
    """Fold `fold` of `folds`, augmented as configured: the same on every rank (each builds it)."""

    raw, samples, _, validation = split_folds(cfg, project_root, folds)
    return with_augmentation(fold_bundle(raw, samples, validation[fold]), cfg.augmentation)
