"""``organ="auto"``: recognise the organ first, then condition the backbone on the guess.

:class:`AutoOrganBackbone` wraps a backbone and an :class:`OrganClassifier`. With
``organ="auto"`` it runs the backbone once with ``unknown`` conditioning, turns the class
token into organ probabilities with the head, and runs the backbone again conditioned on
those probabilities (a ``soft_embedding`` conditioner mixes its embeddings by them; a
``onehot`` conditioner accepts them too). Any other ``organ`` value is passed through, so
the wrapper follows the backbone contract and drops into the evaluation protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from arlkit.conditioners.base import OrganBatch
from arlkit.errors import ConfigError
from arlkit.eval.features import eval_mode
from arlkit.organ.classifier import OrganClassifier

__all__ = ["AUTO", "AutoOrganBackbone"]

AUTO = "auto"


class AutoOrganBackbone(nn.Module):
    """A backbone whose ``organ`` argument may be ``"auto"``.

    Args:
        backbone: follows the backbone contract.
        head: organ classifier trained on this backbone's ``unknown``-conditioned features.
        default: organ used when ``organ`` is omitted (``"auto"`` or ``None`` = unknown).

    Raises:
        ConfigError: the head and the backbone disagree on the taxonomy or the width.
    """

    def __init__(self, backbone: nn.Module, head: OrganClassifier, default: Any = AUTO) -> None:
        super().__init__()
        if tuple(head.taxonomy.organs) != tuple(backbone.taxonomy.organs):
            raise ConfigError(
                "organ auto: the organ head was trained for another taxonomy "
                f"({', '.join(head.taxonomy.organs)}) than the backbone's "
                f"({', '.join(backbone.taxonomy.organs)}); retrain it with 'arlkit organ train'"
            )
        if head.fc.in_features != backbone.embed_dim:
            raise ConfigError(
                f"organ auto: head width {head.fc.in_features} != backbone width {backbone.embed_dim}"
            )
        self.backbone, self.head, self.default = backbone, head, default
        for attr in ("embed_dim", "patch_size", "num_prefix_tokens", "in_chans", "depth"):
            if hasattr(backbone, attr):
                setattr(self, attr, getattr(backbone, attr))

    @property
    def taxonomy(self) -> Any:
        """The backbone's taxonomy, read live: ``add_organ`` on the backbone extends it, and
        organ indices built from a stale copy would put ``unknown`` on the new organ."""
        return self.backbone.taxonomy

    def organ_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted organ probabilities ``(B, K)`` of images ``x (B, in_chans, H, W)``."""
        feats = self.backbone.forward_features(x, None)[:, 0]  # (B, C) class token
        return self.head.probabilities(feats)

    def _resolve(self, x: torch.Tensor, organ: Any) -> OrganBatch:
        if isinstance(organ, Mapping):  # a condition: the organ plus side information
            return {**organ, "organ": self._resolve(x, organ.get("organ"))}
        if isinstance(organ, str) and organ == AUTO:
            # the guess stands in for a label: deterministic, as the head saw it in training
            # (eval mode), even while the backbone is being fine-tuned
            with torch.no_grad(), eval_mode(self.backbone):
                return self.organ_probabilities(x)
        return organ

    def forward_features(
        self, x: torch.Tensor, organ: Any = "default", mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens ``(B, 1+N, C)``; ``organ="auto"`` conditions on the predicted probabilities."""
        organ = self.default if isinstance(organ, str) and organ == "default" else organ
        return self.backbone.forward_features(x, self._resolve(x, organ), mask=mask)

    def forward_intermediates(self, x: torch.Tensor, organ: Any = "default", **kwargs: Any) -> Any:
        """As the backbone's, with ``organ="auto"`` resolved first."""
        organ = self.default if isinstance(organ, str) and organ == "default" else organ
        return self.backbone.forward_intermediates(x, self._resolve(x, organ), **kwargs)

    def forward(self, x: torch.Tensor, organ: Any = "default") -> torch.Tensor:
        """Pooled class-token embedding ``(B, C)``."""
        return self.forward_features(x, organ)[:, 0]
