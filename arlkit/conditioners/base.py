"""The conditioner protocol and the one function that reads an organ batch.

An *organ batch* is what a conditioner (and the backbone) receives as ``organ``:

- ``None``: every image is ``unknown``;
- a LongTensor ``(B,)`` of taxonomy indices in ``[0, K]`` (``K`` = ``unknown``);
- a FloatTensor ``(B, K)`` or ``(B, K+1)`` of class probabilities (soft labels, rows sum
  to 1; without the last column the ``unknown`` probability is 0);
- for convenience, a sequence of organ names or indices (converted with the taxonomy;
  ``None``, ``""`` and ``"unknown"`` entries are ``unknown``).

:func:`canonical_organ` validates it once and returns either the ``(B,)`` indices or the
``(B, K+1)`` probabilities, so a backbone with one conditioner per block checks (and
synchronises with the GPU) once per forward, not once per block.

A *condition* is an organ batch or a mapping ``{"organ": <organ batch>, key: (B, ...)
tensor, ...}``: the organ plus per-image side information (e.g. ``"probe"``, the
transducer type) for conditioners that read it. A conditioner names the keys it reads in
its ``condition_keys`` class attribute; the trainer and the evaluation commands then pass
those keys from the data (see :data:`arlkit.data.condition.CONDITION_KEYS`), and a
backbone passes the mapping, validated by :func:`canonical_condition`, to every block's
conditioner. Conditioners that read only the organ take ``organ_of(condition)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from arlkit.errors import DataError, UnknownOrganError
from arlkit.taxonomy import Taxonomy

__all__ = [
    "Condition",
    "Conditioner",
    "OrganBatch",
    "canonical_condition",
    "canonical_organ",
    "organ_of",
]

OrganBatch = torch.Tensor | Sequence[str | int] | None
Condition = OrganBatch | Mapping[str, Any]


def organ_of(condition: Condition) -> OrganBatch:
    """The organ batch of a condition (its ``"organ"`` entry for a mapping; None if absent)."""
    return condition.get("organ") if isinstance(condition, Mapping) else condition


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def canonical_organ(
    organ: OrganBatch, batch_size: int, taxonomy: Taxonomy, device: torch.device | None = None
) -> torch.Tensor:
    """Validate an organ batch.

    Args:
        organ: see the module docstring.
        batch_size: ``B``, the number of images.
        taxonomy: defines ``K`` and the names.
        device: where the result lives (default: the tensor's own device, or CPU).

    Returns:
        LongTensor ``(B,)`` of indices in ``[0, K]``, or FloatTensor ``(B, K+1)`` of
        probabilities.

    Raises:
        UnknownOrganError: an index or name outside the taxonomy (names the known ones).
        DataError: wrong shape or batch size, or probabilities that are negative or whose
            rows do not sum to 1.
    """
    k = taxonomy.num_classes
    if organ is None:
        return torch.full((batch_size,), k, dtype=torch.long, device=device)
    if not isinstance(organ, torch.Tensor):
        items = list(organ)
        organ = torch.tensor(
            [
                taxonomy.index(o, "organ batch") if o is None or isinstance(o, str) else int(o)
                for o in items
            ],
            dtype=torch.long,
        )
    if device is not None:
        organ = organ.to(device)
    if organ.dim() == 0 or organ.shape[0] != batch_size:
        raise DataError(
            f"organ batch: expected {batch_size} entries (one per image), got shape "
            f"{tuple(organ.shape)}"
        )
    if not organ.is_floating_point():
        if organ.dim() != 1:
            raise DataError(f"organ batch: labels must be (B,), got shape {tuple(organ.shape)}")
        bad = (organ < 0) | (organ > k)
        if bool(bad.any()):
            label = int(organ[bad][0])
            raise UnknownOrganError(
                str(label),
                [f"{i}={n}" for i, n in enumerate(taxonomy.names)],
                "organ batch (index outside the taxonomy)",
            )
        return organ.long()
    if organ.dim() != 2 or organ.shape[1] not in (k, k + 1):
        raise DataError(
            f"organ batch: probabilities must be (B, {k}) or (B, {k + 1}) for a taxonomy of "
            f"{k} organs, got shape {tuple(organ.shape)}"
        )
    probs = organ.float()
    if bool((probs < 0).any()) or not bool(torch.isfinite(probs).all()):
        raise DataError("organ batch: probabilities must be finite and non-negative")
    sums = probs.sum(1)
    tol = _tolerance(organ.dtype)
    if bool(((sums - 1).abs() > tol).any()):
        row = int(((sums - 1).abs() > tol).nonzero()[0])
        raise DataError(
            f"organ batch: probabilities of image {row} sum to {float(sums[row]):.4f}, not 1; "
            "pass softmax outputs (or class indices)"
        )
    if probs.shape[1] == k:  # no unknown column: its probability is 0
        probs = torch.cat([probs, probs.new_zeros(batch_size, 1)], 1)
    return probs


def canonical_condition(
    condition: Condition,
    batch_size: int,
    taxonomy: Taxonomy,
    device: torch.device | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Validate a condition: :func:`canonical_organ` for an organ batch; for a mapping, a dict
    with the canonical ``"organ"`` and every other entry checked to be a tensor with one row
    per image (moved to ``device``).

    Raises:
        UnknownOrganError, DataError: see :func:`canonical_organ`; an entry that is not a
            tensor of ``batch_size`` rows (the message names the key).
    """
    if not isinstance(condition, Mapping):
        return canonical_organ(condition, batch_size, taxonomy, device)
    out = {"organ": canonical_organ(condition.get("organ"), batch_size, taxonomy, device)}
    for key, value in condition.items():
        if key == "organ":
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch_size:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise DataError(
                f"condition {key!r}: expected a tensor with {batch_size} rows (one per image), "
                f"got {got}"
            )
        out[key] = value if device is None else value.to(device)
    return out


class Conditioner(nn.Module):
    """Base of the built-in conditioners: ``forward(condition, batch_size) -> (B, dim)``.

    Subclasses implement :meth:`encode` on a canonical organ batch; :meth:`forward`
    validates first. A subclass that reads side information names it in
    ``condition_keys`` and overrides :meth:`encode_condition`, which receives the whole
    canonical condition; the backbone then validates and draws conditioning dropout once
    per image, not once per block. Third-party conditioners need only ``forward`` (the
    backbone calls it with the whole condition, a mapping when the data gives side
    information) and, to be fed side information in training and evaluation,
    ``condition_keys``.

    Args:
        dim: width ``C`` of the context vector.
        taxonomy: organ classes (default: the 16 built-in organs plus ``unknown``).
    """

    #: per-image side information read beside the organ (keys of a condition mapping)
    condition_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, taxonomy: Taxonomy | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.taxonomy = taxonomy if taxonomy is not None else Taxonomy()

    @property
    def num_classes(self) -> int:
        return self.taxonomy.num_classes

    def encode(self, organ: torch.Tensor) -> torch.Tensor:
        """Context vectors ``(B, dim)`` for a canonical batch (see :func:`canonical_organ`)."""
        raise NotImplementedError

    def encode_condition(self, condition: Condition) -> torch.Tensor:
        """Context vectors ``(B, dim)`` for a canonical condition: its organ already
        validated (:func:`canonical_condition`) and dropped (:meth:`drop`). The organ alone
        here; subclasses that read ``condition_keys`` override this."""
        return self.encode(organ_of(condition))

    def drop(self, organ: torch.Tensor) -> torch.Tensor:
        """Conditioning dropout of a canonical batch: some labels become ``unknown``.

        The identity here. Kept apart from :meth:`encode` because a label belongs to the
        image: a backbone with one conditioner per block draws the dropout once per image
        (with its first block's conditioner) and then encodes in every block, instead of
        each block dropping on its own.
        """
        return organ

    def forward(self, condition: Condition, batch_size: int) -> torch.Tensor:
        """Context vectors ``(B, dim)`` for an organ batch (or a condition mapping's organ),
        after conditioning dropout (:meth:`drop`).

        Raises:
            UnknownOrganError, DataError: see :func:`canonical_organ`.
        """
        device = next(self.parameters()).device
        organ = self.drop(canonical_organ(organ_of(condition), batch_size, self.taxonomy, device))
        if isinstance(condition, Mapping):
            return self.encode_condition({**condition, "organ": organ})
        return self.encode_condition(organ)
