"""Conditioners: the organ of each image → an anatomical context vector ``(B, C)``.

Registered as ``onehot`` (the paper's) and ``soft_embedding``; see
:mod:`arlkit.conditioners.base` for the organ batch they accept.
"""

from __future__ import annotations

from arlkit.conditioners.base import Conditioner, OrganBatch, canonical_organ
from arlkit.conditioners.onehot import OneHotConditioner
from arlkit.conditioners.soft_embedding import SoftEmbeddingConditioner

__all__ = [
    "Conditioner",
    "OneHotConditioner",
    "OrganBatch",
    "SoftEmbeddingConditioner",
    "canonical_organ",
]
