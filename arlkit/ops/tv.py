"""Adapter over ``torchvision.ops.deform_conv2d`` following the :mod:`arlkit.ops` contract.

The contract adopts torchvision's offset layout (``(B, G, K, 2, H, W)`` with ``Δy`` first,
pixel units, corners outside the image contribute zero), so the offsets pass through
unchanged; the adapter reshapes the ``(C_out, C_in/cg, K)`` weight to the
``(C_out, C_in/cg, ks, ks)`` kernel torchvision expects, chooses the "same" padding, and
runs bfloat16 inputs in float32 (torchvision has no bfloat16 kernel). It is the external
reference of the tests; it is slow for depthwise weights (a per-sample im2col).
"""

from __future__ import annotations

import torch

from arlkit.ops.reference import check_deform_args

__all__ = ["deform_conv_torchvision"]

_NATIVE = (torch.float32, torch.float64, torch.float16)


def deform_conv_torchvision(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kernel_size: int,
    dilation: int = 1,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` behind the :mod:`arlkit.ops` contract.

    Args:
        x: features ``(B, C_in, H, W)``.
        offset: ``(B, 2·G·K, H, W)`` pixel offsets (``Δy`` first per point).
        weight: ``(C_out, C_in // channel_groups, K)``.
        mask: optional ``(B, G·K, H, W)`` modulation.
        kernel_size: odd kernel side.
        dilation: spacing of the regular kernel grid.

    Returns:
        ``(B, C_out, H, W)`` in the dtype of ``x``.

    Raises:
        ConfigError: shapes do not follow the contract.
    """
    from torchvision.ops import deform_conv2d  # torchvision is only needed for this adapter

    check_deform_args(x, offset, weight, mask, kernel_size, dilation)
    dtype = x.dtype
    compute = dtype if dtype in _NATIVE else torch.float32
    kernel = weight.reshape(weight.shape[0], weight.shape[1], kernel_size, kernel_size)
    out = deform_conv2d(
        x.contiguous().to(compute),
        offset.contiguous().to(compute),
        kernel.to(compute),
        mask=None if mask is None else mask.contiguous().to(compute),
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
    )
    return out.to(dtype)
