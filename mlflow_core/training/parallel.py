"""How a training run is spread over processes: one `Strategy` per run, so that the loop never asks
whether it is distributed.

`SingleProcess` is the plain case; `DataParallel` is DDP across ranks (gloo on CPUs, NCCL on GPUs):
the same permutation of the data on every rank, each rank its share, gradients averaged on a step's
last micro-batch, and every decision (a non-finite loss, a stop signal, a pruner's verdict) agreed
by all ranks so that they stop at one step. Also the process group's lifetime (init, clean and
abandoned teardown), which the launcher in `mlflow_core.orchestration.launch` drives.
"""

from __future__ import annotations

import contextlib
import math
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from mlflow_core.errors import UserInputError
from mlflow_core.training.data.sampling import DistributedWeightedSampler
from mlflow_core.training.seeding import seed_everything
from mlflow_core.world import World

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank that died leaves the others waiting at most this long


# --- the process group ----------------------------------------------------------------------------

def init_process_group(world: World, device: str = "auto") -> str:
    """NCCL when training on GPUs (each rank on its LOCAL_RANK device), gloo on CPUs. Every rank
    must pass the same `device` (training.device). Returns the backend."""
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and torch.cuda.device_count() <= world.local_rank:
        raise UserInputError(f"rank {world.rank} needs GPU {world.local_rank}, and this machine has "
                             f"{torch.cuda.device_count()}: use at most that many processes per node.")
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size, timeout=COLLECTIVE_TIMEOUT)
    return backend


def destroy_process_group(clean: bool = True) -> None:
    """`clean`: every rank got here normally, so they first wait for each other; tearing down
    while another rank still talks makes gloo abort that process. After an error, no waiting."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def abandon_process_group() -> None:
    """Leave the process group at once, after an error in the middle of a training run: the other
    ranks are inside a collective this rank will never join. Tearing down ends their wait within
    moments (gloo: the connection closes; under NCCL the launcher stops them), instead of after
    COLLECTIVE_TIMEOUT; the launcher then sends and waits for nothing more."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(exc: BaseException) -> bool:
    """An error from a collective whose peer is gone: NCCL raises DistBackendError (a DistError);
    gloo a plain RuntimeError from its transport."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and "/gloo/" in str(exc)


def in_process_group() -> bool:
    return dist.is_initialized()


def broadcast_plan(plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0 sends what the followers need to train with it (None: the command stopped before
    training, e.g. a closed gate; the followers then exit quietly); the others receive it."""
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- strategies -----------------------------------------------------------------------------------

class SingleProcess:
    """One process: every reduction is the value itself."""

    world_size, rank, is_writer, distributed = 1, 0, True, False
    # alone, a stop signal is acted on at once; ranks agree on one at the end of a check window
    stops_at_any_step = True

    def device(self, configured: torch.device) -> torch.device:
        return configured

    def rank_seed(self, seed: int) -> int:
        return seed

    def seed_rank(self, seed: int, deterministic: bool) -> None:
        """After the model is built: each rank its own random stream for training (alone: the stream
        simply continues)."""

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        """The wrapper training calls forward on (None: the model itself)."""
        return None

    def no_sync(self, wrapper: Any, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        return flag

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        return tensor

    def gather(self, value: Any) -> list[Any]:
        return [value]

    def reduce_epoch(self, correct: torch.Tensor, seen: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """The epoch's right predictions and samples over all ranks."""
        return correct, seen

    def share(self, samples: int) -> int:
        """This rank's samples of an epoch over `samples`."""
        return samples

    def validation_shard(self, dataset: Dataset) -> Dataset:
        return dataset

    def train_sampler(self, dataset: Dataset, weights: Any, seed: int, generator: torch.Generator) -> Any:
        if weights is None:
            return None
        from torch.utils.data import WeightedRandomSampler
        # the loader's generator draws the samples too: resume restores both with one state
        return WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True, generator=generator)

    def epoch_sampler(self, sampler: Any) -> Any:
        """The sampler that needs set_epoch each epoch (None alone: the loader's generator decides)."""
        return None

    def on_failure(self) -> None:
        """After an error inside fit."""


class DataParallel(SingleProcess):
    """DDP: `world.world_size` processes, each training its share of every batch."""

    distributed, stops_at_any_step = True, False

    def __init__(self, world: World):
        self.world = world
        self.world_size, self.rank, self.is_writer = world.world_size, world.rank, world.is_writer

    def device(self, configured: torch.device) -> torch.device:
        return torch.device("cuda", self.world.local_rank) if configured.type == "cuda" else configured

    def rank_seed(self, seed: int) -> int:
        # randomness of training (dropout, augmentation, mixing) differs by rank; the model's
        # initialisation was the same everywhere, and DDP starts from rank 0's anyway
        return seed + self.rank

    def seed_rank(self, seed: int, deterministic: bool) -> None:
        seed_everything(self.rank_seed(seed), deterministic)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def no_sync(self, wrapper: Any, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        # gradients are averaged across ranks on the step's last micro-batch only
        return wrapper.no_sync() if wrapper is not None and not last_micro_batch else contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone().float()
        dist.all_reduce(total)  # SUM: gloo has no AVG
        return total / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        box = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return bool(box.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def reduce_epoch(self, correct: torch.Tensor, seen: int, device: torch.device) -> tuple[torch.Tensor, int]:
        totals = torch.stack([correct.double(), torch.tensor(float(seen), device=device, dtype=torch.float64)])
        dist.all_reduce(totals)
        return totals[0], int(totals[1].item())

    def share(self, samples: int) -> int:
        return math.ceil(samples / self.world_size)  # both DDP samplers give equal shares

    def validation_shard(self, dataset: Dataset) -> Dataset:
        from torch.utils.data import Subset
        # validation without the sampler's padding, so that the reduced figures are exact
        return Subset(dataset, range(self.rank, len(dataset), self.world_size))

    def train_sampler(self, dataset: Dataset, weights: Any, seed: int, generator: torch.Generator) -> Any:
        """The same permutation, or weighted draw, on every rank through seed and set_epoch; each rank its share."""
        if weights is not None:
            return DistributedWeightedSampler(weights, self.world_size, self.rank, seed)
        from torch.utils.data import DistributedSampler
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)

    def epoch_sampler(self, sampler: Any) -> Any:
        return sampler

    def on_failure(self) -> None:
        # the other ranks wait in a collective this rank will not join: leaving the process group
        # ends their wait at once, not after its timeout
        abandon_process_group()


def strategy_for(world: World | None) -> SingleProcess:
    return SingleProcess() if world is None else DataParallel(world)
