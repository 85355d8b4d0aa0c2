"""Fused CPU kernels for depthwise deformable sampling, compiled by Numba.

The pure-PyTorch ``reference`` op needs about forty eager operations and ``K``-fold
temporaries per call, which on a CPU costs ~12–20× a depthwise convolution. These kernels
do the whole forward (geometry, bilinear corners, per-channel weights) and the whole
backward (input, offset, weight and mask gradients) in one pass each over the samples,
with the channel loop vectorised — the same arithmetic as :mod:`arlkit.ops.reference`.

Why Numba: it compiles these loops for the machine it runs on (AVX2/AVX-512, NEON) at first
use, without a C++ toolchain at install time, and caches the machine code next to this
module. It is the ``cpu`` extra (``pip install 'arlkit[cpu]'``); without it, ``auto`` runs
the reference on CPU.

Scope: depthwise weights ``(C, 1, K)`` — the ACDT default — with or without a mask,
float32 and float64 (bfloat16/float16 inputs compute in float32). Channel-mixing weights
are refused with a pointer to ``reference``; ``auto`` routes them there itself.

Parallelism: the forward splits output rows, the backward splits (image, offset group)
pairs, so no two threads write the same element — the results do not depend on the number
of threads and the backward is deterministic. Samples whose position is not finite are
skipped (they contribute nothing), which keeps memory access in bounds for any input.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from arlkit.errors import ConfigError
from arlkit.ops.custom_op import register_deform_autograd
from arlkit.ops.reference import check_deform_args

__all__ = [
    "deform_conv_numba",
    "deform_numba",
    "deform_numba_backward",
    "is_depthwise",
    "numba_available",
    "unavailable_error",
]

_AVAILABLE: bool | None = None
_WHY = "the 'numba' package is not installed: pip install 'arlkit[cpu]'"


def numba_available() -> bool:
    """Whether the kernels can be used here: Numba imports and the kernel module loads
    (checked once per process; compilation itself happens at the first call)."""
    global _AVAILABLE, _WHY
    if _AVAILABLE is None:
        ok = importlib.util.find_spec("numba") is not None
        if ok:
            try:
                from arlkit.ops import _numba_kernels  # noqa: F401
            except Exception as exc:  # a broken install (llvmlite ABI), no writable cache
                ok = False
                _WHY = f"numba is installed but the kernels do not load: {exc}"
        _AVAILABLE = ok
    return _AVAILABLE


def unavailable_error() -> ConfigError:
    """The error for an explicit ``numba`` op where the kernels cannot run."""
    return ConfigError(
        f"deform op 'numba': {_WHY}; or use deform_op 'auto' (the reference op without Numba)"
    )


def _kernels():
    """The compiled kernels (Numba compiles per dtype on first use and caches on disk)."""
    from arlkit.ops import _numba_kernels

    return _numba_kernels.forward, _numba_kernels.backward


def _threads() -> None:
    """Use as many Numba threads as PyTorch uses (its setting is the user's intent).

    The first call launches Numba's thread pool. With its OpenMP layer that pool can bind to
    the OpenMP runtime PyTorch already loaded (both ask for ``libgomp.so.1``) and set that
    runtime's thread count to ``NUMBA_NUM_THREADS`` — every core — silently undoing a
    ``torch.set_num_threads`` made before, such as the trainer's one core per loader worker
    (oversubscribed, a 2-core training step took 1.8× as long). PyTorch's setting is put back.
    """
    import numba

    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _arrays(x: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, groups: int, dt):
    """Contiguous compute-dtype tensors in the kernels' layouts (channels-last ``x``)."""
    b, c, h, w = x.shape
    k = weight.shape[-1]
    xc = x.detach().permute(0, 2, 3, 1).to(dt).contiguous()
    oc = offset.detach().to(dt).reshape(b, groups, k, 2, h, w).contiguous()
    wc = weight.detach().to(dt).reshape(c, k).t().contiguous()  # (K, C)
    if mask is None:
        mc = torch.zeros(1, 1, 1, 1, 1, dtype=dt)
    else:
        mc = mask.detach().to(dt).reshape(b, groups, k, h, w).contiguous()
    return xc, oc, wc, mc


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("arlkit::deform_numba", mutates_args=())
def deform_numba(
    x: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, kernel_size: int,
    dilation: int, groups: int,
) -> Tensor:
    """Forward kernel as a custom op (opaque to ``torch.compile``, no graph break)."""
    forward, _ = _kernels()
    dt = _compute_dtype(x)
    xc, oc, wc, mc = _arrays(x, offset, weight, mask, groups, dt)
    out = torch.zeros_like(xc)
    _threads()
    forward(xc.numpy(), oc.numpy(), wc.numpy(), mc.numpy(), mask is not None, kernel_size,
            dilation, groups, out.numpy())
    return out.permute(0, 3, 1, 2).to(x.dtype)  # channels-last strides, like reference


@deform_numba.register_fake
def _deform_numba_fake(x, offset, weight, mask, kernel_size, dilation, groups):
    b, c, h, w = x.shape
    return x.new_empty((b, h, w, c)).permute(0, 3, 1, 2)


@torch.library.custom_op("arlkit::deform_numba_backward", mutates_args=())
def deform_numba_backward(
    grad: Tensor, x: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
    kernel_size: int, dilation: int, groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(x, offset, weight, mask)``; the mask gradient is empty without a mask."""
    _, backward = _kernels()
    dt = _compute_dtype(x)
    xc, oc, wc, mc = _arrays(x, offset, weight, mask, groups, dt)
    b, c, h, w = x.shape
    gyc = grad.permute(0, 2, 3, 1).to(dt).contiguous()
    gx = torch.zeros_like(xc)
    goff = torch.zeros_like(oc)
    gw = torch.zeros(b, kernel_size**2, c, dtype=dt)  # per image: threads never share a row
    gm = torch.zeros_like(mc)
    _threads()
    backward(xc.numpy(), oc.numpy(), wc.numpy(), mc.numpy(), mask is not None, kernel_size,
             dilation, groups, gyc.numpy(), gx.numpy(), goff.numpy(), gw.numpy(), gm.numpy())
    return (
        gx.permute(0, 3, 1, 2).to(x.dtype),
        goff.view(offset.shape).to(offset.dtype),
        gw.sum(0).t().contiguous().view(weight.shape).to(weight.dtype),
        x.new_empty(0) if mask is None else gm.view(mask.shape).to(mask.dtype),
    )


@deform_numba_backward.register_fake
def _deform_numba_backward_fake(grad, x, offset, weight, mask, kernel_size, dilation, groups):
    b, c, h, w = x.shape
    # the strides of the real outputs: gx channels-last, the others contiguous
    gx = x.new_empty((b, h, w, c)).permute(0, 3, 1, 2)
    gm = x.new_empty(0) if mask is None else mask.new_empty(mask.shape)
    return gx, offset.new_empty(offset.shape), weight.new_empty(weight.shape), gm


register_deform_autograd(deform_numba, deform_numba_backward)


def deform_conv_numba(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None = None,
    *,
    kernel_size: int,
    dilation: int = 1,
) -> Tensor:
    """Depthwise deformable sampling on the CPU by the Numba kernels (operator contract).

    Args:
        x, offset, weight, mask, kernel_size, dilation: as in :mod:`arlkit.ops`; ``weight``
            must be depthwise, ``(C, 1, K)``.

    Returns:
        ``(B, C, H, W)`` in the dtype of ``x``, channels-last strides.

    Raises:
        ConfigError: Numba is missing, a tensor is not on the CPU, the weights mix channels,
            or the shapes break the contract.
    """
    groups, _ = check_deform_args(x, offset, weight, mask, kernel_size, dilation)
    if not numba_available():
        raise unavailable_error()
    tensors = [x, offset, weight] + ([] if mask is None else [mask])
    if any(t.device.type != "cpu" for t in tensors):
        raise ConfigError(
            "deform op 'numba' runs on the CPU; these tensors are on "
            f"{sorted({str(t.device) for t in tensors})} — use deform_op 'auto' or 'triton' on GPUs"
        )
    if not is_depthwise(x, weight):
        raise ConfigError(
            f"deform op 'numba' implements depthwise weights (C, 1, K) = ({x.shape[1]}, 1, "
            f"{kernel_size ** 2}); got {tuple(weight.shape)} — use deform_op 'reference' (or "
            "'auto') for channel mixing"
        )
    return deform_numba(x, offset, weight, mask, kernel_size, dilation, groups)


def is_depthwise(x: Tensor, weight: Tensor) -> bool:
    """Whether ``weight`` is depthwise for ``x`` (the layout the kernels implement)."""
    return weight.dim() == 3 and weight.shape[1] == 1 and weight.shape[0] == x.shape[1]
