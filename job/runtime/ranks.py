"""Data parallelism: this process's place under `paddle.distributed.launch`, and each rank's share of
every global batch."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """This process's place under `python -m paddle.distributed.launch` (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_ranks() -> Ranks:
    """Read the launcher's environment and join the process group once, when there is more than one."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
    if world <= 1:
        return Ranks()
    import paddle.distributed as dist

    if not dist.is_initialized():
        dist.init_parallel_env()
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size())


def usable_batches(batches: list[list[int]], ranks: Ranks) -> list[list[int]]:
    """Global batches every rank can take a share of: one with fewer rows than ranks is dropped by all
    ranks alike (each step is a collective that every rank must join)."""
    return [batch for batch in batches if len(batch) >= ranks.world]


def shard_batches(batches: list[list[int]], ranks: Ranks) -> list[list[int]]:
    """Each global batch split across ranks (rank r takes rows r, r+world, ...), so data-parallel
    training steps through the same global batches as one process."""
    return [batch[ranks.rank :: ranks.world] for batch in usable_batches(batches, ranks)]
