"""KoLeo regulariser (Sablayrolles et al. 2019, as used by DINOv2): spread a batch's
features over the sphere by pushing every feature away from its nearest neighbour.

``L = -1/B Σ_i log(min_{j≠i} ||x̂_i - x̂_j|| + ε)`` with ``x̂ = x / ||x||`` — the
Kozachenko–Leonenko estimate of the differential entropy of the batch, up to constants.
The nearest neighbour is chosen without gradient; the distance to it carries the
gradient.

Example::

    loss = koleo_loss(student_cls_tokens)  # (B, C)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.errors import ConfigError

__all__ = ["KoLeoLoss", "koleo_loss"]


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo loss of one batch of features.

    Args:
        x: ``(B, C)`` features, B >= 2 (normalised here).
        eps: added to the distances inside the log.

    Returns:
        Scalar float32 tensor.

    Raises:
        ConfigError: not 2-D, or fewer than two rows.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(
            f"koleo_loss: expected (B, C) features with B >= 2, got {tuple(x.shape)}"
        )
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.T
        sim.fill_diagonal_(-2.0)  # never one's own neighbour (cosine is >= -1)
        nearest = sim.argmax(dim=1)
    dist = (x - x[nearest]).norm(dim=-1)
    return -(dist + eps).log().mean()


class KoLeoLoss(nn.Module):
    """:func:`koleo_loss` as a module, applied to each of ``views`` equal chunks of the
    batch (view-major rows: neighbours are searched among the images of one view, as
    DINOv2 does for its two global crops) and averaged.

    Args:
        views: chunks of the batch (1 = the whole batch).
        eps: added to the distances inside the log.
    """

    def __init__(self, views: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if views < 1:
            raise ConfigError(f"KoLeoLoss: views must be >= 1, got {views}")
        self.views, self.eps = views, eps

    def forward(self, x: Tensor) -> Tensor:
        """Mean KoLeo loss of the ``views`` chunks of ``x``.

        Args:
            x: ``(V·B, C)`` features (e.g. class tokens), view-major; L2-normalised inside.

        Returns:
            Scalar tensor.

        Raises:
            ConfigError: the rows do not split into ``views`` equal chunks.
        """
        if x.shape[0] % self.views:
            raise ConfigError(
                f"KoLeoLoss: {x.shape[0]} rows do not split into views={self.views} chunks"
            )
        chunks = x.chunk(self.views)
        return torch.stack([koleo_loss(c, self.eps) for c in chunks]).mean()
