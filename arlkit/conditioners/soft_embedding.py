"""Learned organ embeddings that accept soft labels, with a learned ``unknown`` embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.conditioners.base import Conditioner
from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["SoftEmbeddingConditioner"]


class SoftEmbeddingConditioner(Conditioner):
    """One learned vector per organ class plus a learned null vector for ``unknown``.

    Hard labels look their vector up; soft labels ``(B, K+1)`` mix the vectors by their
    probabilities. *Conditioning dropout* replaces a label by ``unknown`` with probability
    ``drop_prob`` in training mode, so that a model trained with labels also works
    without them (classifier-free-guidance style).

    Args:
        dim: width of the context vector (injected).
        taxonomy: organ classes (injected).
        drop_prob: probability of replacing a label by ``unknown`` during training.
        init_std: standard deviation of the initial embeddings.

    Raises:
        ConfigError: ``drop_prob`` outside ``[0, 1]`` or ``init_std`` negative.
    """

    def __init__(
        self,
        dim: int,
        taxonomy: Taxonomy | None = None,
        drop_prob: float = 0.1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(dim, taxonomy)
        if not 0.0 <= drop_prob <= 1.0:
            raise ConfigError(f"soft_embedding: drop_prob must be in [0, 1], got {drop_prob}")
        if init_std < 0:
            raise ConfigError(f"soft_embedding: init_std must be ≥ 0, got {init_std}")
        self.drop_prob = drop_prob
        # row K is the learned null embedding of ``unknown``
        self.embedding = nn.Parameter(torch.randn(self.num_classes + 1, dim) * init_std)

    def drop(self, organ: torch.Tensor) -> torch.Tensor:
        """Replace each label by ``unknown`` with probability ``drop_prob`` (training only)."""
        if not self.training or self.drop_prob == 0.0:
            return organ
        b = organ.shape[0]
        drop = torch.rand(b, device=organ.device) < self.drop_prob  # (B,)
        if organ.is_floating_point():
            unknown = F.one_hot(
                torch.tensor(self.num_classes, device=organ.device), self.num_classes + 1
            ).to(organ.dtype)
            return torch.where(drop[:, None], unknown, organ)
        return torch.where(drop, torch.full_like(organ, self.num_classes), organ)

    def encode(self, organ: torch.Tensor) -> torch.Tensor:
        """``(B,)`` indices or ``(B, K+1)`` probabilities → ``(B, dim)`` (no dropout here:
        :meth:`forward`, or the backbone once per image, applies :meth:`drop`)."""
        if organ.is_floating_point():
            return organ.to(self.embedding.dtype) @ self.embedding  # (B, K+1) @ (K+1, C)
        return F.embedding(organ, self.embedding)
