"""Offset networks ``g_θ`` of the ACDT block: conditioned grid → per-point pixel offsets."""

from __future__ import annotations

import torch
from torch import nn

from arlkit.errors import ConfigError

__all__ = ["DWConvOffsetNet"]


def _stride_like_grads(weight: nn.Parameter) -> None:
    """Give a depthwise or ``1×1`` conv weight the channels-last strides of its gradients.

    The offset net reads a channels-last view of the token grid, so the convolutions'
    weight gradients come back channels-last: ``(9, 1, 3, 1)`` for a ``(C, 1, 3, 3)``
    depthwise weight where the parameter has ``(9, 9, 3, 1)``. Those differ only on dims of
    size 1, so the memory is the same, but DDP compares strides exactly and warned "grad
    strides do not match bucket view strides" (and copied every gradient). Re-striding the
    parameter (same storage, still ``is_contiguous()``, so checkpoints are unchanged) makes
    the two agree.
    """
    out_c, in_c, kh, kw = weight.shape
    strides = (in_c * kh * kw, 1, kw * in_c, in_c)  # torch.channels_last for this shape
    if all(a == b for a, b, n in zip(strides, weight.stride(), weight.shape, strict=True)
           if n > 1):  # the same memory layout: only size-1 dims may differ
        weight.data = weight.data.as_strided(weight.shape, strides)


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
        for conv in (self.dw, self.proj):
            _stride_like_grads(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → offsets ``(B, 2·num_points, H, W)`` in pixels."""
        off = self.proj(self.act(self.dw(x)))
        if self.max_offset is not None:
            off = self.max_offset * torch.tanh(off / self.max_offset)
        return off
