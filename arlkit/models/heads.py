"""DINO projection head: MLP → L2-normalised bottleneck → weight-normalised prototypes.

Follows the DINO reference (Caron et al. 2021, ``vision_transformer.DINOHead``),
including its parameter names (``mlp``, ``last_layer.weight_g/weight_v``), so that
DINO checkpoints load. The prototype layer is weight-normalised; with
``norm_last_layer=True`` its norms are fixed to 1 (only directions are learned),
which stabilises training. Freezing the prototypes for the first epoch(s) is done by
:meth:`DINOHead.cancel_last_layer_gradients` after ``backward()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.errors import ConfigError

__all__ = ["DINOHead", "WeightNormLinear", "cancel_last_layer_gradients"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g · v / ||v||`` (norm per output row).

    Args:
        in_features: input size.
        out_features: output size.
        fix_norm: freeze ``g`` at 1 (DINO's ``norm_last_layer``).
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=5**0.5)  # nn.Linear's default initialisation
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)

    @property
    def weight(self) -> Tensor:
        """The effective ``(out, in)`` weight."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``."""
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """Projection head of DINO.

    Args:
        in_dim: backbone embedding size (injected by the heads registry).
        out_dim: number of prototypes ``K``.
        hidden_dim: MLP width.
        bottleneck_dim: size of the L2-normalised bottleneck.
        nlayers: linear layers in the MLP (>= 1).
        norm_last_layer: fix the prototype norms to 1.
        use_bn: batch norm after the hidden linear layers.
        freeze_last_layer: epochs during which :meth:`cancel_last_layer_gradients`
            drops the prototype gradients (DINO uses 1).

    Raises:
        ConfigError: non-positive sizes.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
        freeze_last_layer: int = 1,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim, nlayers) <= 0:
            raise ConfigError(
                "DINOHead: in_dim, out_dim, hidden_dim, bottleneck_dim and nlayers must be "
                f"positive, got {in_dim}, {out_dim}, {hidden_dim}, {bottleneck_dim}, {nlayers}"
            )
        if freeze_last_layer < 0:
            raise ConfigError(f"DINOHead: freeze_last_layer must be >= 0, got {freeze_last_layer}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.freeze_last_layer = freeze_last_layer
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for i in range(nlayers - 1):
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                last = i == nlayers - 2
                layers.append(nn.Linear(hidden_dim, bottleneck_dim if last else hidden_dim))
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim) -> (..., out_dim)`` prototype logits: class tokens ``(B, in_dim)``
        or patch tokens ``(B, N, in_dim)``."""
        lead = x.shape[:-1]
        # BatchNorm1d reads (M, C): patch tokens share statistics over B·N (iBOT's head)
        x = self.mlp(x.reshape(-1, x.shape[-1]))  # (M, bottleneck)
        x = F.normalize(x, dim=-1, p=2)  # bottleneck on the unit sphere
        return self.last_layer(x).reshape(*lead, self.out_dim)

    def cancel_last_layer_gradients(self, epoch: float) -> bool:
        """Drop the prototype gradients while ``epoch < freeze_last_layer``.

        Call after ``backward()`` and before ``optimizer.step()``.

        Args:
            epoch: current (possibly fractional) epoch.

        Returns:
            Whether gradients were dropped.
        """
        return cancel_last_layer_gradients(self, epoch, self.freeze_last_layer)


def cancel_last_layer_gradients(module: nn.Module, epoch: float, freeze_epochs: float) -> bool:
    """Set ``grad = None`` on every parameter named ``*last_layer*`` while frozen.

    Works on any module that contains a DINO head (e.g. a wrapped student).

    Args:
        module: the head or a module containing it.
        epoch: current (possibly fractional) epoch.
        freeze_epochs: epochs to keep the last layer frozen.

    Returns:
        Whether gradients were dropped.
    """
    if epoch >= freeze_epochs:
        return False
    for name, p in module.named_parameters():
        if "last_layer" in name:
            p.grad = None
    return True


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
