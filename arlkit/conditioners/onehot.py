"""The paper's conditioner: one-hot organ class → linear projection to the model width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.conditioners.base import Conditioner
from arlkit.taxonomy import Taxonomy

__all__ = ["OneHotConditioner"]


class OneHotConditioner(Conditioner):
    """One-hot over the ``K`` organ classes, then ``Linear(K, dim)``.

    ``unknown`` is the all-zero vector (the context is then the bias alone); soft labels
    are used as they are (a probability-weighted mix of the class projections).

    Args:
        dim: width of the context vector (injected: the model width).
        taxonomy: organ classes (injected).
        bias: learn a bias (the context of ``unknown`` images).
    """

    def __init__(self, dim: int, taxonomy: Taxonomy | None = None, bias: bool = True) -> None:
        super().__init__(dim, taxonomy)
        self.proj = nn.Linear(self.num_classes, dim, bias=bias)

    def encode(self, organ: torch.Tensor) -> torch.Tensor:
        """``(B,)`` indices or ``(B, K+1)`` probabilities → ``(B, dim)``."""
        k = self.num_classes
        if organ.is_floating_point():
            onehot = organ[:, :k]  # the unknown column projects to zero
        else:
            onehot = F.one_hot(organ, k + 1)[:, :k]  # (B, K+1) -> (B, K)
        return self.proj(onehot.to(self.proj.weight.dtype))
