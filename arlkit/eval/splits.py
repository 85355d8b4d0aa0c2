"""Split helpers of evaluation: label fractions and patient-grouped splits.

:func:`label_fraction_indices` subsamples a training split per class with a fixed seed
and keeps at least one example of every class; :func:`grouped_split` splits examples into
train/validation/test by patient, stratified by label, so that the frames of one patient
never straddle two splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from arlkit.errors import ConfigError

__all__ = ["grouped_split", "label_fraction_indices", "parse_fractions"]


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.01,0.1,1.0"`` → ``(0.01, 0.1, 1.0)``; each in (0, 1].

    Raises:
        ConfigError: a value is not a number or lies outside (0, 1].
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--label-fraction: {part!r} is not a number; use e.g. 0.01,0.1,1.0") from None
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"--label-fraction: {value} is outside (0, 1]")
        out.append(value)
    if not out:
        raise ConfigError("--label-fraction: give at least one fraction, e.g. 1.0")
    return tuple(sorted(set(out)))


def label_fraction_indices(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """A stratified subset: ``max(1, round(fraction · n_c))`` examples of every class c.

    Args:
        labels: ``(N,)`` class per example.
        fraction: in (0, 1]; 1 keeps everything.
        seed: the same seed gives the same subset.

    Returns:
        sorted indices into ``labels``.
    """
    y = np.asarray(labels, np.int64)
    if fraction >= 1.0:
        return np.arange(y.size)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = min(members.size, max(1, round(fraction * members.size)))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def grouped_split(
    labels: Sequence[int],
    groups: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split examples into train/val/test by group (patient), stratified by label.

    Each group is given the label most of its examples have; within each label the groups
    are shuffled and about ``val_fraction`` / ``test_fraction`` of them go to validation /
    test (the rest, at least one group when there is one, to training). An empty group
    name means an example of its own.

    Args:
        labels: ``(N,)`` class per example.
        groups: ``(N,)`` patient id per example (``""``: none).
        val_fraction, test_fraction: shares of groups per label, summing below 1.
        seed: shuffling seed.

    Returns:
        sorted ``(train, val, test)`` index arrays; no group appears in two of them.
    """
    if val_fraction < 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"split fractions val={val_fraction}, test={test_fraction}: need test > 0, val >= 0, "
            "and val + test < 1"
        )
    names = [g if g else f"\0{i}" for i, g in enumerate(groups)]
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(names):
        members[g].append(i)
    strata: dict[int, list[str]] = defaultdict(list)
    for g in sorted(members):  # sorted: independent of row order
        counts = Counter(int(labels[i]) for i in members[g])
        majority = min(counts, key=lambda c: (-counts[c], c))
        strata[majority].append(g)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in sorted(strata):
        gs = strata[label]
        order = rng.permutation(len(gs))
        n_test = round(test_fraction * len(gs))
        n_val = round(val_fraction * len(gs))
        if n_test + n_val >= len(gs):  # keep at least one group for training
            n_val = max(0, min(n_val, len(gs) - 1 - n_test))
            n_test = max(0, min(n_test, len(gs) - 1 - n_val))
        for rank, j in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            parts[split].extend(members[gs[j]])
    return tuple(np.array(sorted(parts[s]), np.int64) for s in ("train", "val", "test"))
