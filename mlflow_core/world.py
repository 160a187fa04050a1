"""A process's place in a multi-process (DDP) run, read from the launcher's environment.

Torch-free on purpose: the CLI asks "am I rank 0?" before it decides whether to import torch."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def world_from_env() -> World | None:
    """The process's place in a multi-process run (RANK, WORLD_SIZE, LOCAL_RANK as torchrun and
    `wf phase … --nproc-per-node` set them), or None when it runs alone."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if size <= 1:
        return None
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
