"""Map-style datasets over the synthetic generator.

Every item is a pure function of ``(seed, index)`` (no global random state), so any
worker, rank or resumed run produces the same image for the same index. Samples follow
arlkit's sample contract::

    {"image": FloatTensor (1, H, W) in [0, 1], "fov": BoolTensor (1, H, W),
     "organ": int, "label": int, "probe": str, "id": str, "patient_id": str,
     "seed": int, "valid": True}                 (+ "mask": LongTensor (H, W) for cardiac_seg)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from arlkit.data.synthetic.generate import PROBE_NAMES, SyntheticImage, render
from arlkit.data.synthetic.phantoms import all_phantoms
from arlkit.data.synthetic.tasks import get_task
from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["SPLITS", "SyntheticTask", "SyntheticUltrasound", "sample_seed"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_CORPUS_STREAM = 0
_TASK_STREAM = 1


def sample_seed(*key: int) -> int:
    """A 63-bit seed hashed from non-negative integers (``SeedSequence`` mixing)."""
    words = np.random.SeedSequence(list(key)).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


def _to_sample(img: SyntheticImage, organ: int, label: int, sample_id: str) -> dict[str, Any]:
    size = img.image.shape[-1]
    return {
        "image": torch.from_numpy(img.image).view(1, size, size),
        "fov": torch.from_numpy(img.fov.copy()).view(1, size, size),
        "organ": organ,
        "label": label,
        "probe": img.probe,
        "id": sample_id,
        "patient_id": "",
        "seed": img.seed,
        "valid": True,
    }


def _check_index(i: int, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} items")
    return i


def _check_probes(probes: Sequence[str] | None) -> tuple[str, ...] | None:
    if probes is None:
        return None
    bad = [p for p in probes if p not in PROBE_NAMES]
    if bad or not probes:
        raise ConfigError(
            f"synthetic data: probes must be a non-empty list of {', '.join(PROBE_NAMES)}; "
            f"got {list(probes)!r}"
        )
    return tuple(dict.fromkeys(probes))


class SyntheticUltrasound(Dataset):
    """The synthetic pretraining corpus: B-mode images of every organ with a phantom.

    Args:
        size: output side in pixels (>= 32).
        length: virtual epoch length (number of distinct indices).
        organs: organ subset (taxonomy names); default every taxonomy organ that has a
            phantom family.
        probes: probes to draw from for every organ; default each organ's typical probes.
        seed: base seed; item ``i`` uses ``sample_seed(seed, 0, i)``.
        taxonomy: organ classes and their indices (default: arlkit's 16 organs).
        organ_weights: relative frequency of each organ (default uniform); the
            organ-balanced sampler can rebalance them.

    Attributes:
        organs: the organ names drawn, in taxonomy order.
        classes: the taxonomy's class names (what ``"organ"`` indexes).
        organ_indices: taxonomy index of every item, without generating it.

    Raises:
        ConfigError: an organ without a phantom family, a bad probe, size or length.
        UnknownOrganError: an organ outside the taxonomy.
    """

    def __init__(
        self,
        size: int = 224,
        length: int = 100_000,
        organs: Sequence[str] | None = None,
        probes: Sequence[str] | None = None,
        seed: int = 0,
        taxonomy: Taxonomy | None = None,
        organ_weights: dict[str, float] | None = None,
    ) -> None:
        self.taxonomy = taxonomy or Taxonomy()
        if size < 32 or length < 1 or seed < 0:
            raise ConfigError(
                f"synthetic data: need size >= 32, length >= 1 and seed >= 0; "
                f"got size={size}, length={length}, seed={seed}"
            )
        self.size, self.length, self.seed = int(size), int(length), int(seed)
        self.probes = _check_probes(probes)
        families = all_phantoms()
        if organs is None:
            chosen = [o for o in self.taxonomy.organs if o in families]
            if not chosen:
                raise ConfigError(
                    "synthetic data: no organ of the taxonomy has a phantom family "
                    f"(taxonomy: {', '.join(self.taxonomy.organs)}; phantoms: "
                    f"{', '.join(sorted(families))}); add phantoms with register_phantom"
                )
        else:
            for o in organs:
                self.taxonomy.index(o, where="synthetic data: organs")
            missing = [o for o in organs if o not in families]
            if missing:
                raise ConfigError(
                    f"synthetic data: no phantom family for organ(s) {', '.join(missing)} "
                    f"(available: {', '.join(sorted(families))}); remove them from 'organs' "
                    "or register a family with arlkit.data.synthetic.phantoms.register_phantom"
                )
            chosen = sorted(dict.fromkeys(organs), key=self.taxonomy.index)
        self.organs: list[str] = chosen
        self.classes: list[str] = list(self.taxonomy.names)
        self._organ_of = self._assign(organ_weights)
        self.organ_indices: list[int] = [
            self.taxonomy.index(self.organs[k]) for k in self._organ_of.tolist()
        ]

    def _assign(self, weights: dict[str, float] | None) -> np.ndarray:
        """Organ slot per item: exact proportions, in a seeded random order."""
        w = np.ones(len(self.organs))
        if weights is not None:
            unknown = sorted(set(weights) - set(self.organs))
            if unknown or any(v < 0 for v in weights.values()):
                raise ConfigError(
                    f"synthetic data: organ_weights must be non-negative and name drawn organs "
                    f"({', '.join(self.organs)}); got {weights!r}"
                )
            w = np.array([float(weights.get(o, 0.0)) for o in self.organs])
            if w.sum() <= 0:
                raise ConfigError("synthetic data: organ_weights are all zero")
        share = w / w.sum() * self.length
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(counts - share)[: self.length - counts.sum()]] += 1  # largest remainder
        slots = np.repeat(np.arange(len(self.organs)), counts)
        return np.random.default_rng([self.seed, 7]).permutation(slots)

    def __len__(self) -> int:
        return self.length

    def organ(self, i: int) -> str:
        """Organ name of item ``i`` (cheap)."""
        return self.organs[int(self._organ_of[_check_index(i, self.length)])]

    def render(self, i: int, stages: bool = False) -> SyntheticImage:
        """The raw rendering of item ``i`` (numpy arrays, variant name, optional stages)."""
        i = _check_index(i, self.length)
        seed = sample_seed(self.seed, _CORPUS_STREAM, i)
        return render(self.organ(i), seed, self.size, probes=self.probes, stages=stages)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, self.length)
        img = self.render(i)
        return _to_sample(img, self.organ_indices[i], -1, f"synthetic/{img.organ}/{i}")

    def __repr__(self) -> str:
        return (
            f"SyntheticUltrasound(size={self.size}, length={self.length}, "
            f"organs={len(self.organs)}, seed={self.seed})"
        )


class SyntheticTask(Dataset):
    """A labelled downstream set: ``n`` images of one task and split, balanced over classes.

    Splits use disjoint seed streams, so train, val and test never share a sample.

    Args:
        task: ``breast``, ``thyroid``, ``gallbladder``, ``lung``, ``cardiac_view`` or
            ``cardiac_seg`` (see :data:`~arlkit.data.synthetic.tasks.TASKS`).
        n: number of items.
        split: ``train``, ``val`` or ``test``.
        size: output side in pixels (>= 32).
        seed: base seed.
        taxonomy: organ classes (default: arlkit's 16 organs); must contain the task's organ.

    Attributes:
        classes: class names by label (``["background", "lv"]`` for ``cardiac_seg``).
        labels: label of every item (-1 for ``cardiac_seg``), like torchvision's ``targets``.
        groups: index into ``spec.variants`` of every item (the label, 0 for ``cardiac_seg``).
        organ_indices: taxonomy index of every item.
    """

    def __init__(
        self,
        task: str,
        n: int,
        split: str = "train",
        size: int = 224,
        seed: int = 0,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        self.spec = get_task(task)
        if split not in SPLITS:
            raise ConfigError(f"synthetic data: split must be one of {SPLITS}, got {split!r}")
        if n < 1 or size < 32 or seed < 0:
            raise ConfigError(
                f"synthetic task {task!r}: need n >= 1, size >= 32 and seed >= 0; "
                f"got n={n}, size={size}, seed={seed}"
            )
        self.taxonomy = taxonomy or Taxonomy()
        self.task, self.n, self.split, self.size, self.seed = (
            task,
            int(n),
            split,
            int(size),
            int(seed),
        )
        self.organ_index = self.taxonomy.index(self.spec.organ, where=f"synthetic task {task!r}")
        self.classes: list[str] = list(self.spec.classes)
        self._key = (self.seed, _TASK_STREAM, zlib.crc32(task.encode()), SPLITS.index(split))
        groups = len(self.spec.variants)
        order = np.random.default_rng([*self._key, 2**20]).permutation(np.arange(self.n) % groups)
        self.groups: list[int] = order.tolist()
        self.labels: list[int] = [-1] * self.n if self.spec.segmentation else list(self.groups)
        self.organ_indices: list[int] = [self.organ_index] * self.n

    @property
    def targets(self) -> list[int]:
        return self.labels

    def __len__(self) -> int:
        return self.n

    def render(self, i: int, stages: bool = False) -> SyntheticImage:
        """The raw rendering of item ``i``."""
        i = _check_index(i, self.n)
        seed = sample_seed(*self._key, i)
        group = self.spec.variants[self.groups[i]]
        variant = group[seed % len(group)]
        return render(self.spec.organ, seed, self.size, variant=variant, stages=stages)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, self.n)
        img = self.render(i)
        sample = _to_sample(
            img, self.organ_index, self.labels[i], f"synthetic/{self.task}/{self.split}/{i}"
        )
        if self.spec.segmentation:
            sample["mask"] = torch.from_numpy(img.labels)
        return sample

    def __repr__(self) -> str:
        return f"SyntheticTask({self.task!r}, n={self.n}, split={self.split!r}, size={self.size})"
