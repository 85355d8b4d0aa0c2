"""The ``auto`` deform op: the fused Triton kernel on CUDA, the reference elsewhere.

Recipes default to ``auto``: training on a GPU gets the fused kernel (when Triton is
importable) and everything else — CPU runs, machines without Triton — the pure-PyTorch
reference, with identical semantics (the operator contract of :mod:`arlkit.ops`).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

__all__ = ["AutoDeform", "deform_conv_auto", "triton_available"]

_TRITON: bool | None = None


def triton_available() -> bool:
    """Whether the ``triton`` package imports here (checked once per process)."""
    global _TRITON
    if _TRITON is None:
        ok = importlib.util.find_spec("triton") is not None
        if ok:
            try:
                import triton  # noqa: F401
            except Exception:  # a broken install (driver, ABI) means: no kernel
                ok = False
        _TRITON = ok
    return _TRITON


def deform_conv_auto(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None = None,
    *,
    kernel_size: int,
    dilation: int = 1,
    deterministic: bool | None = None,
    use_triton: bool | None = None,
) -> Tensor:
    """Deformable sampling by the fastest available implementation of the contract.

    Args:
        x, offset, weight, mask, kernel_size, dilation: as in :mod:`arlkit.ops`.
        deterministic: passed to the Triton op (None follows
            ``torch.are_deterministic_algorithms_enabled()``); the reference is deterministic
            whenever PyTorch's deterministic algorithms are enabled.
        use_triton: whether Triton may be used; None checks :func:`triton_available`.

    Returns:
        ``(B, C_out, H, W)``, channels-last.

    Raises:
        ConfigError: shapes break the contract.
    """
    if use_triton is None:
        use_triton = triton_available()
    if use_triton and x.is_cuda:
        from arlkit.ops.custom_op import deform_conv_triton

        return deform_conv_triton(
            x,
            offset,
            weight,
            mask,
            kernel_size=kernel_size,
            dilation=dilation,
            deterministic=deterministic,
        )
    from arlkit.ops.reference import deform_conv_reference

    return deform_conv_reference(x, offset, weight, mask, kernel_size=kernel_size, dilation=dilation)


class AutoDeform:
    """The ``auto`` deform op (callable following the operator contract).

    Triton's availability is decided once, at construction, so that a compiled model does
    not re-check it on every call.

    Args:
        deterministic: see :func:`deform_conv_auto`.
    """

    def __init__(self, deterministic: bool | None = None) -> None:
        self.deterministic = deterministic
        # a machine without CUDA never runs the kernel: do not import Triton there
        self.use_triton = torch.cuda.is_available() and triton_available()

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
        return deform_conv_auto(
            x,
            offset,
            weight,
            mask,
            kernel_size=kernel_size,
            dilation=dilation,
            deterministic=self.deterministic,
            use_triton=self.use_triton,
        )

    def __repr__(self) -> str:
        return f"AutoDeform(deterministic={self.deterministic}, triton={self.use_triton})"
