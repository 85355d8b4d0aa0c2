"""Organ taxonomy: class names, their indices, and the ``unknown`` class.

The taxonomy is data, not code: recipes may replace it. Index ``len(organs)`` is
always ``unknown`` (images without an organ label). Only depends on the standard
library so that data, models and the recipe schema can all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arlkit.errors import ConfigError, UnknownOrganError

__all__ = ["DEFAULT_ORGANS", "UNKNOWN", "Taxonomy"]

UNKNOWN = "unknown"

DEFAULT_ORGANS: tuple[str, ...] = (
    "breast",
    "thyroid",
    "gallbladder",
    "liver",
    "kidney",
    "spleen",
    "pancreas",
    "bladder",
    "uterus_ovary",
    "prostate",
    "fetal",
    "cardiac",
    "lung",
    "carotid",
    "musculoskeletal",
    "testis",
)


@dataclass(frozen=True)
class Taxonomy:
    """An ordered set of organ classes plus ``unknown`` at index ``num_classes``.

    Args:
        organs: class names, lower-case identifiers, unique, without ``unknown``.
    """

    organs: tuple[str, ...] = DEFAULT_ORGANS

    def __post_init__(self) -> None:
        organs = tuple(self.organs)
        object.__setattr__(self, "organs", organs)
        if not organs:
            raise ConfigError("a taxonomy needs at least one organ class")
        seen: set[str] = set()
        for name in organs:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"organ names must be non-empty strings, got {name!r}")
            if name == UNKNOWN:
                raise ConfigError(
                    f"{UNKNOWN!r} is implicit in every taxonomy; remove it from the organ list"
                )
            if name in seen:
                raise ConfigError(f"organ {name!r} appears twice in the taxonomy")
            seen.add(name)

    @property
    def num_classes(self) -> int:
        """Number of real organ classes (``unknown`` excluded)."""
        return len(self.organs)

    @property
    def unknown_index(self) -> int:
        return len(self.organs)

    @property
    def names(self) -> tuple[str, ...]:
        """All names by index, ``unknown`` last."""
        return (*self.organs, UNKNOWN)

    def index(self, label: str | None, where: str = "") -> int:
        """Index of ``label``; ``None``, ``""`` and ``"unknown"`` map to the unknown index."""
        if label is None or label == "" or label == UNKNOWN:
            return self.unknown_index
        try:
            return self._lookup[label]
        except KeyError:
            raise UnknownOrganError(str(label), self.names, where) from None

    def indices(self, labels: Iterable[str | None]) -> list[int]:
        return [self.index(label) for label in labels]

    def name(self, index: int) -> str:
        if not 0 <= index <= self.unknown_index:
            raise ConfigError(f"organ index {index} is outside 0..{self.unknown_index}")
        return self.names[index]

    def extended(self, new: Sequence[str]) -> Taxonomy:
        """A taxonomy with ``new`` classes appended (old indices unchanged)."""
        return Taxonomy((*self.organs, *new))

    @property
    def _lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {name: i for i, name in enumerate(self.organs)}
            object.__setattr__(self, "_cache", cache)
        return cache
