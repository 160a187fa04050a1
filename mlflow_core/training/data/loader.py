"""The DataLoader the trainer iterates, and its collate."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.training.data.datasets import NormalizedDataset
from mlflow_core.training.data.packed import GatheredBatch, PackedDataset
from mlflow_core.training.seeding import make_generator, seed_worker


def collate_batches(data: Any) -> Any:
    """The DataLoader's collate: a gathered batch as it is, per-sample items stacked as always."""
    from torch.utils.data import default_collate

    return tuple(data) if isinstance(data, GatheredBatch) else default_collate(data)


def make_loader(dataset: Dataset, cfg: WorkflowConfig, *, train: bool, device: torch.device,
                seed: int, sampler: Any = None, batch_size: int | None = None,
                generator: torch.Generator | None = None) -> DataLoader:
    """`sampler`: a DistributedSampler under DDP (it shuffles; the generator then only seeds workers).
    `batch_size`: a curriculum stage's (default training.batch_size)."""
    pin = cfg.data.pin_memory if cfg.data.pin_memory != "auto" else device.type == "cuda"
    # a packed split is gathered a batch at a time in this process: a worker would only add the copy of
    # every batch through shared memory (3–9× slower on the loader benchmark, bench/README.md)
    workers = 0 if gathers_batches(dataset) else cfg.data.num_workers
    return DataLoader(dataset, batch_size=batch_size or cfg.training.batch_size, shuffle=train and sampler is None,
                      sampler=sampler, drop_last=False, num_workers=workers, pin_memory=bool(pin),
                      worker_init_fn=seed_worker, generator=generator or make_generator(seed),
                      persistent_workers=workers > 0, collate_fn=collate_batches)


def gathers_batches(dataset: Dataset) -> bool:
    """Whether every layer of `dataset` reads a whole batch at once (a pack, normalised or a subset
    of one): then no per-sample work is left for worker processes."""
    while True:
        if isinstance(dataset, PackedDataset):
            return True
        if isinstance(dataset, NormalizedDataset):
            dataset = vars(dataset)["base"]
        elif isinstance(dataset, Subset):
            dataset = dataset.dataset
        else:
            return False
