"""An iterable view of any map-style dataset, sharded across ranks and loader workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from arlkit.errors import ConfigError

__all__ = ["ShardedStream"]


class ShardedStream(IterableDataset):
    """Iterate a map-style dataset, split across distributed ranks and loader workers.

    Shard ``k`` of ``S = world_size * num_workers`` (``k = rank * num_workers +
    worker_id``) takes positions ``k, k + S, k + 2S, …`` of the epoch's order, so shards
    are disjoint and together cover the dataset once per epoch.

    Args:
        dataset: any map-style dataset.
        shuffle: visit indices in a seeded random order that changes with the epoch.
        seed: seed of that order.
        rank, world_size: this process's shard; default from ``torch.distributed`` when
            initialised, else ``0`` and ``1``.
        infinite: keep going, epoch after epoch (the epoch counter advances).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        infinite: bool = False,
    ) -> None:
        self.dataset, self.shuffle, self.seed, self.infinite = dataset, shuffle, seed, infinite
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = (
            world_size
            if world_size is not None
            else (torch.distributed.get_world_size() if dist else 1)
        )
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"ShardedStream: rank {self.rank} outside world size {self.world_size}"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def indices(self, epoch: int, worker: int = 0, num_workers: int = 1) -> np.ndarray:
        """Dataset indices of one shard for one epoch."""
        n = len(self.dataset)  # type: ignore[arg-type]
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        shards = self.world_size * num_workers
        return order[self.rank * num_workers + worker :: shards]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        while True:
            for i in self.indices(epoch, worker, workers):
                yield self.dataset[int(i)]
            if not self.infinite:
                return
            epoch += 1
