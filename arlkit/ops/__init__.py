"""Deformable sampling operators: ``y(p) = Σ_k w_k · S(x, p + p_k + Δp_k)``.

Every operator registered in the ``deform_ops`` registry is a callable with this signature
(the *operator contract*; the reference, the torchvision adapter and the fused kernels all
implement it, and the tests hold them to each other)::

    op(x, offset, weight, mask=None, *, kernel_size: int, dilation: int = 1) -> y

Shapes, with ``K = kernel_size ** 2``, ``G`` offset groups and ``channel_groups`` weight groups:

- ``x``: ``(B, C_in, H, W)``, any strides (channels-last is common: tokens arrive as
  ``(B, N, C)``). The ``G`` offset groups split the channels into ``G`` contiguous blocks
  of ``C_in // G`` channels; each block has its own offsets.
- ``offset``: ``(B, 2·G·K, H, W)``, laid out as ``offset.view(B, G, K, 2, H, W)``;
  ``[..., 0, :, :]`` is ``Δy`` (rows) and ``[..., 1, :, :]`` is ``Δx`` (columns),
  **in pixels** of ``x`` (tokens, for a ViT grid). This is torchvision's layout.
- ``weight``: ``(C_out, C_in // channel_groups, K)``; ``channel_groups = C_in //
  weight.shape[1]``. Depthwise ``(C, 1, K)`` is the default of the ACDT block; grouped
  and full mixing ``(C_out, C_in, K)`` are options.
- ``mask``: optional ``(B, G·K, H, W)`` modulation (DCNv2), multiplies each sample.
- ``y``: ``(B, C_out, H, W)``; no bias.

Sampling convention. Pixel centres sit at integer coordinates (``align_corners=True`` in
``grid_sample`` terms, but with zero padding rather than border clamping). For output pixel
``(h, w)`` and kernel point ``k = (i, j)`` in row-major order over the ``ks × ks`` kernel,
the sample is taken at::

    (h + (i - (ks - 1) / 2) · dilation + Δy,   w + (j - (ks - 1) / 2) · dilation + Δx)

with bilinear interpolation in which each of the four neighbouring pixels that lies outside
``[0, H-1] × [0, W-1]`` contributes zero. A sample at an infinite position (an offset that
overflowed) lies wholly outside like any other; the reference, Numba and Triton ops treat
a NaN position the same way. Stride is 1 and padding is "same", so zero offsets give exactly a
``ks × ks`` convolution with zero padding. The result equals
``torchvision.ops.deform_conv2d(x, offset, weight.view(C_out, -1, ks, ks), mask=mask,
padding=dilation * (ks - 1) // 2, dilation=dilation)``.

Operators are differentiable in ``x``, ``offset``, ``weight`` and ``mask`` and accept
float32, bfloat16 and float64 (sampling positions and accumulation are computed in at
least float32).
"""

from __future__ import annotations

from typing import Protocol

import torch

from arlkit.ops.reference import deform_conv_reference
from arlkit.ops.tv import deform_conv_torchvision

__all__ = ["DeformOp", "deform_conv_reference", "deform_conv_torchvision"]


class DeformOp(Protocol):
    """The operator contract (see the module docstring)."""

    def __call__(
        self,
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        kernel_size: int,
        dilation: int = 1,
    ) -> torch.Tensor: ...
