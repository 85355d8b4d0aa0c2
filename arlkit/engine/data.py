"""The engine's data plumbing: global batches split over processes, exactly resumable.

Step ``s`` of an epoch trains on positions ``[s·B, (s+1)·B)`` of that epoch's sampler
order (``B`` = global batch). Process ``r`` of ``W`` takes positions ``r, r+W, ...`` of
the global batch, split into micro-batches for gradient accumulation. The data order
is therefore a function of (seed, step) alone: resuming — even on a different number
of processes — continues the same sequence, and ``W`` processes see exactly the
global batch one process would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from arlkit.data.condition import side_information
from arlkit.data.sampler import draw_numbers, seed_for, view_seed
from arlkit.errors import ConfigError

__all__ = [
    "BatchPlan",
    "StepBatchSampler",
    "ViewsDataset",
    "collate_views",
    "make_loader",
    "seed_for",
    "share_cores",
]


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is split.

    Attributes:
        global_batch: images per optimizer step over all processes.
        world_size, rank: process layout.
        accum_steps: micro-batches per optimizer step and process.
        dataset_len: samples per epoch.
    """

    global_batch: int
    world_size: int
    rank: int
    accum_steps: int
    dataset_len: int

    def __post_init__(self) -> None:
        per_rank, rem = divmod(self.global_batch, self.world_size)
        if rem:
            raise ConfigError(
                f"data.batch_size={self.global_batch} is not divisible by the {self.world_size} "
                "processes; choose a multiple"
            )
        if per_rank % self.accum_steps:
            raise ConfigError(
                f"the per-process batch {per_rank} (data.batch_size={self.global_batch} over "
                f"{self.world_size} process(es)) is not divisible by "
                f"optim.accum_steps={self.accum_steps}; choose a divisor of {per_rank}"
            )
        if self.dataset_len < self.global_batch:
            raise ConfigError(
                f"the dataset has {self.dataset_len} samples, fewer than one batch "
                f"(data.batch_size={self.global_batch}); lower data.batch_size or add images"
            )

    @property
    def micro_batch(self) -> int:
        return self.global_batch // self.world_size // self.accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_len // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_positions(self, micro: int) -> list[int]:
        """Positions within the global batch of this process's micro-batch ``micro``."""
        mine = list(range(self.rank, self.global_batch, self.world_size))
        return mine[micro * self.micro_batch : (micro + 1) * self.micro_batch]


class StepBatchSampler(Sampler[list[tuple[int, int, int, int]]]):
    """Yields this process's micro-batches as ``(dataset_index, position, epoch, repeat)``
    keys; ``repeat`` counts the earlier draws of the same index in the epoch (an
    organ-balanced order draws the images of rare organs several times), so that each
    draw gets views of its own.

    Args:
        order: ``order(epoch)`` → the epoch's dataset indices (one process's view of the
            sampler, e.g. an organ-balanced sampler with one replica).
        plan: batch layout.
        start_step: first optimizer step to produce (resume).
        total_steps: last step (exclusive).
    """

    def __init__(
        self,
        order: Callable[[int], Sequence[int]],
        plan: BatchPlan,
        start_step: int,
        total_steps: int,
    ) -> None:
        self.order, self.plan = order, plan
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.plan.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        plan = self.plan
        cached_epoch, indices, repeats = -1, [], []
        for step in range(self.start_step, self.total_steps):
            epoch = plan.epoch_of(step)
            if epoch != cached_epoch:
                indices, cached_epoch = list(self.order(epoch)), epoch
                repeats = draw_numbers(indices)
            offset = (step - epoch * plan.steps_per_epoch) * plan.global_batch
            for micro in range(plan.accum_steps):
                yield [(int(indices[offset + p]), p, epoch, repeats[offset + p])
                       for p in plan.micro_positions(micro)]  # fmt: skip


class ViewsDataset(Dataset):
    """Applies the views transform with a generator seeded by ``(seed, epoch, index)`` (and
    the draw's ``repeat`` when an index comes again in the epoch), so a sample's crops are
    the same whichever process or worker makes them, and on resume, while repeated draws
    of one image get different crops.

    Keys are ``(index, position, epoch[, repeat])`` from :class:`StepBatchSampler`; samples
    are tagged with their position in the global batch.
    """

    def __init__(self, dataset: Any, views: Any, seed: int) -> None:
        self.dataset, self.views, self.seed = dataset, views, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        index, pos, epoch = key[:3]
        repeat = key[3] if len(key) > 3 else 0
        sample = dict(self.dataset[index])
        if sample.get("valid", True):  # the seed of the public ViewDataset's views
            generator = torch.Generator().manual_seed(view_seed(self.seed, epoch, index, repeat))
            sample = dict(self.views(sample, generator=generator))
        sample["_pos"] = pos
        return sample


def collate_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack views of the valid samples; invalid ones (unreadable files) are dropped and
    reported in ``bad_files`` as ``(id, reason)`` — never replaced by another sample."""
    good = [s for s in samples if s.get("valid", True)]
    bad = [(str(s.get("id", "?")), str(s.get("error", "unreadable"))) for s in samples
           if not s.get("valid", True)]
    batch: dict[str, Any] = {"bad_files": bad, "n": len(good)}
    if not good:
        return batch
    batch["global"] = torch.stack([s["global"] for s in good])  # (b, V_g, C, S, S)
    if "global_clean" in good[0]:
        batch["global_clean"] = torch.stack([s["global_clean"] for s in good])
    local = [s.get("local") for s in good]
    if local[0] is not None and local[0].shape[0] > 0:
        batch["local"] = torch.stack(local)  # (b, V_l, C, s, s)
    batch["organ"] = torch.tensor([int(s["organ"]) for s in good], dtype=torch.long)
    batch.update(side_information(good))  # probe, depth: for conditioners that read them
    batch["pos"] = torch.tensor([int(s["_pos"]) for s in good], dtype=torch.long)
    return batch


def make_loader(
    dataset: ViewsDataset, sampler: StepBatchSampler, num_workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_views,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        # its own generator: creating the iterator must not draw from the global RNG,
        # which drop-path uses and checkpoints restore (exact resume)
        generator=torch.Generator().manual_seed(0),
    )


@contextmanager
def share_cores(device: torch.device, num_workers: int) -> Iterator[None]:
    """Leave a CPU core per loader worker while the block runs, then restore the setting.

    On the CPU, PyTorch's compute threads beside ``num_workers`` loader processes that
    together outnumber the cores spin against each other: on small machines that slows
    training by up to an order of magnitude. Inside the block PyTorch uses
    ``cores - num_workers`` threads (at least one) when it would otherwise oversubscribe;
    a GPU device, no workers, or enough cores leave it alone.
    """
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if device.type == "cpu" and num_workers > 0 and before + num_workers > cores:
        torch.set_num_threads(max(1, cores - num_workers))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
