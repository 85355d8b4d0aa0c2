"""The fused deformable-sampling kernel as a ``torch.library`` custom op.

Registers ``torch.ops.arlkit.deform_sample`` (forward) and
``torch.ops.arlkit.deform_sample_backward`` with fake (meta) implementations, so that
``torch.compile`` traces through a model that uses them without a graph break, and with
``register_autograd``, so they are differentiable in ``x``, ``offset``, ``weight`` and
``mask`` (first order; double backward is not supported).

Autocast. Like a convolution, the op runs in the autocast dtype: inside
``torch.autocast(device, dtype=...)`` its float32/float16/bfloat16 inputs are cast to that
dtype (float64 is left alone), and autocast is disabled while it runs. The kernels
accumulate in float32 regardless and return ``x.dtype``.

Triton is imported only when the op runs (a CUDA tensor, or CPU under
``TRITON_INTERPRET=1``), so importing this module is cheap and works without Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arlkit.ops.reference import check_deform_args

__all__ = [
    "TritonDeform",
    "deform_conv_triton",
    "deform_sample",
    "deform_sample_backward",
    "register_deform_autograd",
]


@torch.library.custom_op("arlkit::deform_sample", mutates_args=())
def deform_sample(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    kernel_size: int,
    dilation: int,
    deterministic: bool,
) -> Tensor:
    """Fused deformable sampling; see :func:`arlkit.ops.triton_deform.deform_forward`.

    ``deterministic`` only affects the backward pass (it is an input so that autograd sees it).
    """
    from arlkit.ops.triton_deform import deform_forward

    return deform_forward(x, offset, weight, mask, kernel_size, dilation)


@deform_sample.register_fake
def _deform_sample_fake(x, offset, weight, mask, kernel_size, dilation, deterministic):
    check_deform_args(x, offset, weight, mask, kernel_size, dilation)
    b, _, h, w = x.shape
    # Same strides as the real kernel's output: (B, H, W, C_out) -> (B, C_out, H, W)
    return x.new_empty((b, h, w, weight.shape[0])).permute(0, 3, 1, 2)


@torch.library.custom_op("arlkit::deform_sample_backward", mutates_args=())
def deform_sample_backward(
    grad: Tensor,
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    kernel_size: int,
    dilation: int,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(x, offset, weight, mask)``; the mask gradient is empty without a mask."""
    from arlkit.ops.triton_deform import deform_backward

    gx, goff, gw, gm = deform_backward(
        grad, x, offset, weight, mask, kernel_size, dilation, deterministic
    )
    return gx, goff, gw, x.new_empty(0) if gm is None else gm


@deform_sample_backward.register_fake
def _deform_sample_backward_fake(grad, x, offset, weight, mask, kernel_size, dilation, det):
    b, c, h, w = x.shape
    gx = x.new_empty((b, h, w, c)).permute(0, 3, 1, 2)  # channels-last, as the kernel's
    gm = x.new_empty(0) if mask is None else torch.empty_like(mask)
    return gx, torch.empty_like(offset), weight.new_empty(weight.shape), gm


def register_deform_autograd(forward_op, backward_op) -> None:
    """Make a deform custom op differentiable through its backward custom op.

    Both take ``(x, offset, weight, mask, *conf)`` (the backward with the output gradient
    first) and the backward returns ``(gx, goff, gw, gm)``, ``gm`` empty without a mask.
    """

    def setup_context(ctx, inputs, output) -> None:
        x, offset, weight, mask, *conf = inputs
        ctx.save_for_backward(x, offset, weight, mask)
        ctx.conf = tuple(conf)

    def backward(ctx, grad: Tensor):
        x, offset, weight, mask = ctx.saved_tensors
        gx, goff, gw, gm = backward_op(grad, x, offset, weight, mask, *ctx.conf)
        need = ctx.needs_input_grad
        return (
            gx if need[0] else None,
            goff if need[1] else None,
            gw if need[2] else None,
            gm if mask is not None and need[3] else None,
            *(None for _ in ctx.conf),
        )

    forward_op.register_autograd(backward, setup_context=setup_context)


register_deform_autograd(deform_sample, deform_sample_backward)

_LIB = torch.library.Library("arlkit", "FRAGMENT")


def _autocast_kernel(device_type: str):
    def kernel(x, offset, weight, mask, kernel_size, dilation, deterministic):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t: Tensor | None) -> Tensor | None:
            eligible = t is not None and t.is_floating_point() and t.dtype != torch.float64
            return t.to(dtype) if eligible and t.device.type == device_type else t

        with torch.autocast(device_type, enabled=False):
            return deform_sample(
                cast(x), cast(offset), cast(weight), cast(mask), kernel_size, dilation, deterministic
            )

    return kernel


for _device, _key in (("cuda", "AutocastCUDA"), ("cpu", "AutocastCPU")):
    _LIB.impl("deform_sample", _autocast_kernel(_device), _key)


def deform_conv_triton(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None = None,
    *,
    kernel_size: int,
    dilation: int = 1,
    deterministic: bool | None = None,
) -> Tensor:
    """The fused deformable operator behind the :mod:`arlkit.ops` contract.

    Args:
        x: features ``(B, C_in, H, W)`` (channels-last is the fast layout).
        offset: ``(B, 2·G·K, H, W)`` pixel offsets, ``Δy`` first per point.
        weight: ``(C_out, C_in // channel_groups, K)``.
        mask: optional ``(B, G·K, H, W)`` modulation.
        kernel_size: odd kernel side; ``K = kernel_size²``.
        dilation: spacing of the regular kernel grid.
        deterministic: bitwise-reproducible backward; None follows
            ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``(B, C_out, H, W)`` in ``x.dtype`` (autocast dtype under autocast), channels-last.

    Raises:
        ConfigError: shapes break the contract, or the tensors are not on CUDA (and the
            kernels are not running under ``TRITON_INTERPRET=1``).
    """
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    return deform_sample(x, offset, weight, mask, kernel_size, dilation, deterministic)


class TritonDeform:
    """The ``triton`` deform op: :func:`deform_conv_triton` with a fixed ``deterministic``.

    Args:
        deterministic: bitwise-reproducible backward; None follows
            ``torch.are_deterministic_algorithms_enabled()`` at call time.
    """

    def __init__(self, deterministic: bool | None = None) -> None:
        self.deterministic = deterministic

    def __call__(
        self,
        x: Tensor,
        offset: Tensor,
        weight: Tensor,
        mask: Tensor | None = None,
        *,
        kernel_size: int,
        dilation: int = 1,
    ) -> Tensor:
        return deform_conv_triton(
            x,
            offset,
            weight,
            mask,
            kernel_size=kernel_size,
            dilation=dilation,
            deterministic=self.deterministic,
        )

    def __repr__(self) -> str:
        return f"TritonDeform(deterministic={self.deterministic})"
