"""Offset networks ``g_θ`` of the ACDT block: conditioned grid → per-point pixel offsets."""

from __future__ import annotations

import torch
from torch import nn

from arlkit.errors import ConfigError

__all__ = ["DWConvOffsetNet"]


class DWConvOffsetNet(nn.Module):
    """Depthwise ``k×k`` conv → GELU → ``1×1`` conv to ``2·num_points`` offset channels.

    The last layer starts at zero, so a new model samples the regular kernel grid and the
    offsets grow from there (as in Deformable DETR / DAT).

    Args:
        dim: input channels ``C`` (injected: the model width).
        num_points: ``G·K`` sampling points per position (injected).
        kernel_size: side of the depthwise convolution.
        max_offset: if set, offsets are bounded to ``±max_offset`` pixels with a scaled
            ``tanh``; ``None`` leaves them unbounded.

    Raises:
        ConfigError: even ``kernel_size`` or non-positive ``max_offset``.
    """

    def __init__(
        self,
        dim: int,
        num_points: int,
        kernel_size: int = 3,
        max_offset: float | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"dwconv offset net: kernel_size must be odd, got {kernel_size}")
        if max_offset is not None and max_offset <= 0:
            raise ConfigError(f"dwconv offset net: max_offset must be > 0, got {max_offset}")
        self.max_offset = max_offset
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(dim, 2 * num_points, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → offsets ``(B, 2·num_points, H, W)`` in pixels."""
        off = self.proj(self.act(self.dw(x)))
        if self.max_offset is not None:
            off = self.max_offset * torch.tanh(off / self.max_offset)
        return off
