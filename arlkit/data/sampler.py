"""Organ-balanced sampling: a temperature between natural organ frequencies and uniform.

With ``n_o`` images of organ ``o`` (``unknown`` is a group of its own), an epoch of
``M`` draws gives organ ``o`` the share

    p_o = n_o^T / Σ_o' n_o'^T

``T = 1`` keeps the natural frequencies, ``T = 0`` makes organs equally likely, values
in between flatten the distribution (as in multilingual language-model sampling).

The epoch is *stratified*, not i.i.d.: organ ``o`` gets exactly ``round(M · p_o)``
draws (largest remainders; the counts sum to ``M``); within an organ the draws walk
through fresh random permutations of its images, so no image repeats before every
image of its organ has been drawn; the draws of all organs are then shuffled together.
At ``T = 1`` with ``M = N`` this is a plain random permutation of the dataset.

Sharding: every process computes the same global order from ``(seed, epoch)`` and
takes positions ``rank, rank + W, …`` of it; the shards are disjoint, and together
they are the one-process sequence (padded by wrapping around when ``M`` is not a
multiple of ``W``, like ``DistributedSampler``, unless ``drop_last``).

Below ``T = 1`` the images of rare organs come several times per epoch. With
``draws=True`` the sampler yields ``(index, draw)`` pairs, ``draw`` counting the earlier
draws of that index in the epoch (:func:`draw_numbers`), and
:class:`arlkit.data.dataset.ViewDataset` gives each draw views of its own; plain indices
would give every draw of an image the same crops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from arlkit.errors import ConfigError, DataError

__all__ = ["OrganBalancedSampler", "draw_numbers", "organ_shares", "seed_for", "view_seed"]


def draw_numbers(indices: Sequence[int] | np.ndarray) -> list[int]:
    """For each position of a sequence, how often its index occurred at earlier positions.

    Example: ``draw_numbers([4, 2, 4, 4, 2]) == [0, 0, 1, 2, 1]``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    counts = np.diff(np.r_[starts, len(idx)])
    out = np.empty(len(idx), dtype=np.int64)
    out[order] = np.arange(len(idx)) - np.repeat(starts, counts)
    return out.tolist()


def organ_shares(counts: Sequence[int] | np.ndarray, temperature: float) -> np.ndarray:
    """Share of each group, ``n^T / Σ n^T`` over the groups with ``n > 0``.

    Args:
        counts: ``(G,)`` images per group.
        temperature: ``T ≥ 0``.

    Returns:
        ``(G,)`` float64 shares summing to 1 (0 for empty groups).
    """
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    weights = np.zeros_like(n)
    weights[present] = n[present] ** temperature  # 0**0 == 1 would count empty groups
    return weights / weights.sum()


def _quotas(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts ``≈ total · shares`` summing to ``total`` (largest remainder)."""
    exact = shares * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        # ties broken by group index: stable sort of the negated remainders
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


class OrganBalancedSampler(Sampler[Any]):
    """Organ-balanced, seeded, shardable and resumable sampler of dataset indices.

    Args:
        organ_indices: ``(N,)`` organ (taxonomy index) of every dataset item.
        temperature: ``T`` of the organ shares (1 natural, 0 uniform over organs).
        num_samples: draws per epoch over all processes (default ``N``).
        seed: base seed; the order is a function of ``(seed, epoch)`` only.
        rank: this process's shard.
        world_size: number of shards. Defaults are one shard (not read from
            ``torch.distributed``: arlkit's engine shards global batches itself).
        drop_last: drop the tail instead of padding so all shards are equally long.
        draws: yield ``(index, draw)`` pairs instead of indices, ``draw`` numbering the
            repeats of an index within the epoch (for :class:`ViewDataset`: fresh views
            for every draw).

    Raises:
        ConfigError: negative temperature, bad rank/world size, no items.
    """

    def __init__(
        self,
        organ_indices: Sequence[int] | np.ndarray,
        temperature: float = 1.0,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        draws: bool = False,
    ) -> None:
        organs = np.asarray(organ_indices, dtype=np.int64).reshape(-1)
        if organs.size == 0:
            raise ConfigError("OrganBalancedSampler: the dataset is empty")
        if organs.min() < 0:
            raise ConfigError("OrganBalancedSampler: organ indices must be ≥ 0")
        if not temperature >= 0.0 or not math.isfinite(temperature):
            raise ConfigError(f"sampler temperature must be ≥ 0, got {temperature}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"sampler: rank {rank} is not in 0..{world_size - 1}")
        total = len(organs) if num_samples is None else int(num_samples)
        if total <= 0:
            raise ConfigError(f"sampler: num_samples must be positive, got {num_samples}")
        self.temperature, self.seed = float(temperature), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), drop_last
        self.draws = bool(draws)
        self.num_samples = total
        self.epoch = 0
        self._start = 0  # position in this shard where the next __iter__ begins
        self._yielded = 0
        # Items grouped by organ: one stable argsort, slices per organ.
        self._order = np.argsort(organs, kind="stable")
        self._groups, self._counts = np.unique(organs, return_counts=True)
        self.shares = organ_shares(self._counts, self.temperature)
        self.quotas = _quotas(self.shares, total)

    # ------------------------------------------------------------------ sizes
    @property
    def shard_length(self) -> int:
        """Indices per shard and epoch."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        """Indices the next ``iter()`` yields (shorter right after a resume)."""
        return self.shard_length - self._start

    def group_quotas(self) -> dict[int, int]:
        """Draws per organ index in one epoch, over all shards."""
        return {int(g): int(q) for g, q in zip(self._groups, self.quotas)}

    # ------------------------------------------------------------------ order
    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's full sequence of dataset indices (all shards), ``(num_samples,)``."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed & (2**63 - 1), epoch, 0x0A4C])
        if self.temperature == 1.0 and self.num_samples == len(self._order):
            return rng.permutation(self._order)  # natural frequencies: a plain shuffle
        picks = []
        start = 0
        for count, quota in zip(self._counts.tolist(), self.quotas.tolist()):
            items = self._order[start : start + count]
            start += count
            if quota == 0:
                continue
            rounds = -(-quota // count)  # fresh permutations until the quota is reached
            walk = np.concatenate([rng.permutation(items) for _ in range(rounds)])
            picks.append(walk[:quota])
        return rng.permutation(np.concatenate(picks))

    def _padded(self, epoch: int | None) -> np.ndarray:
        order = self.global_order(epoch)
        length = self.shard_length * self.world_size
        if length > len(order):  # pad by wrapping, as DistributedSampler does
            order = np.concatenate([order, np.resize(order, length - len(order))])
        return order[:length]

    def shard(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices of the epoch, ``(shard_length,)``."""
        return self._padded(epoch)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Any]:
        order = self._padded(None)
        indices = order[self.rank :: self.world_size].tolist()
        # draw numbers over the whole epoch, so that every shard numbers alike
        draws = draw_numbers(order)[self.rank :: self.world_size] if self.draws else None
        start, self._start = self._start, 0
        self._yielded = start
        for k in range(start, len(indices)):
            self._yielded += 1
            yield (indices[k], draws[k]) if draws is not None else indices[k]

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next ``iter()`` (a new order per epoch)."""
        self.epoch = int(epoch)
        self._yielded = 0

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where the sampler stands, to resume exactly.

        Args:
            consumed: indices of this epoch the training loop has *used* on this rank.
                Pass it when a DataLoader sits between sampler and loop: the loader fetches
                ahead, so the count of indices handed out overstates progress.

        Returns:
            Plain ints and floats: ``epoch``, ``position`` (this rank), ``global_position``
            (the whole sequence, for resuming on another number of processes), and the
            settings that define the order.
        """
        position = self._yielded if consumed is None else int(consumed)
        return {
            "epoch": self.epoch, "position": position,
            "global_position": position * self.world_size, "seed": self.seed,
            "temperature": self.temperature, "num_samples": self.num_samples,
            "world_size": self.world_size,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``iter()`` continues epoch ``state["epoch"]`` where it stopped.

        A different ``world_size`` is allowed: the position is taken from the global one.

        Raises:
            DataError: the seed, temperature or epoch length differ (the order would too).
        """
        for key in ("seed", "temperature", "num_samples"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"sampler state from a checkpoint has {key}={state[key]!r}, this run has "
                    f"{getattr(self, key)!r}; resume with the same data settings"
                )
        self.epoch = int(state["epoch"])
        if int(state.get("world_size", self.world_size)) == self.world_size:
            position = int(state["position"])
        else:
            position = int(state["global_position"]) // self.world_size
        self._start = min(max(position, 0), self.shard_length)
        self._yielded = self._start


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix-style), stable across processes."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value ^= (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2)) & ((1 << 64) - 1)
        value = (value * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        value ^= value >> 31
    return value & ((1 << 63) - 1)


def view_seed(seed: int, epoch: int, index: int, draw: int = 0) -> int:
    """The 63-bit seed of item ``index`` in ``epoch`` (independent streams per triple), and
    of its ``draw``-th repeat in the epoch (draw 0 is the triple's).

    ``arlkit run`` seeds its views with the same function, so :class:`ViewDataset` with a
    recipe's ``seed`` gives the crops that training with that recipe sees.
    """
    return seed_for(seed, epoch, index, *([draw] if draw else []))
