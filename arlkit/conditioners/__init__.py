"""Conditioners: the organ of each image → an anatomical context vector ``(B, C)``.

Registered as ``onehot`` (the paper's) and ``soft_embedding``; see
:mod:`arlkit.conditioners.base` for the organ batch (and condition mapping) they accept.
"""

from __future__ import annotations

from arlkit.conditioners.base import (
    Condition,
    Conditioner,
    OrganBatch,
    canonical_condition,
    canonical_organ,
    organ_of,
)
from arlkit.conditioners.onehot import OneHotConditioner
from arlkit.conditioners.soft_embedding import SoftEmbeddingConditioner

__all__ = [
    "Condition",
    "Conditioner",
    "OneHotConditioner",
    "OrganBatch",
    "SoftEmbeddingConditioner",
    "canonical_condition",
    "canonical_organ",
    "organ_of",
]
