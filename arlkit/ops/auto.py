"""The ``auto`` deform op: the fastest implementation of the contract for each call.

The shipped recipes choose ``auto`` (a recipe without ``model.deform_op`` gets
``reference``): on a GPU it runs the fused Triton kernel (when Triton is
importable); on the CPU the fused Numba kernels (when Numba is installed — the ``cpu``
extra — and the weights are depthwise, the ACDT default); everything else runs the
pure-PyTorch reference. All have the same semantics (the operator contract of
:mod:`arlkit.ops`), so a checkpoint trained with one runs with the others.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from arlkit.ops.numba_deform import deform_conv_numba, is_depthwise, numba_available

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
    use_numba: bool | None = None,
) -> Tensor:
    """Deformable sampling by the fastest available implementation of the contract.

    Args:
        x, offset, weight, mask, kernel_size, dilation: as in :mod:`arlkit.ops`.
        deterministic: passed to the Triton op (None follows
            ``torch.are_deterministic_algorithms_enabled()``); the Numba kernels are always
            deterministic, the reference whenever PyTorch's deterministic algorithms are.
        use_triton: whether Triton may be used; None checks :func:`triton_available`.
        use_numba: whether the Numba kernels may be used on CPU tensors; None checks
            :func:`arlkit.ops.numba_deform.numba_available`.

    Returns:
        ``(B, C_out, H, W)``, channels-last.

    Raises:
        ConfigError: shapes break the contract.
    """
    impl = _choose(x.device, is_depthwise(x, weight), use_triton, use_numba)
    if impl == "triton":
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
    if impl == "numba":
        return deform_conv_numba(x, offset, weight, mask, kernel_size=kernel_size, dilation=dilation)
    from arlkit.ops.reference import deform_conv_reference

    return deform_conv_reference(x, offset, weight, mask, kernel_size=kernel_size, dilation=dilation)


def _choose(
    device: torch.device, depthwise: bool, use_triton: bool | None, use_numba: bool | None
) -> str:
    """``triton``, ``numba`` or ``reference``: the implementation ``auto`` runs on ``device``.

    A None flag checks availability, and only on the device that would use it.
    """
    if device.type == "cuda" and (triton_available() if use_triton is None else use_triton):
        return "triton"
    if device.type == "cpu" and depthwise and (numba_available() if use_numba is None else use_numba):
        return "numba"
    return "reference"


class AutoDeform:
    """The ``auto`` deform op (callable following the operator contract).

    The availability of Triton and Numba is decided once, at construction, so that a
    compiled model does not re-check it on every call.

    Args:
        deterministic: see :func:`deform_conv_auto`.
    """

    def __init__(self, deterministic: bool | None = None) -> None:
        self.deterministic = deterministic
        # a machine without CUDA never runs the kernel: do not import Triton there
        self.use_triton = torch.cuda.is_available() and triton_available()
        self.use_numba = numba_available()

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
            use_numba=self.use_numba,
        )

    def choice(self, device: torch.device, depthwise: bool = True) -> str:
        """The implementation calls on ``device`` take: ``triton``, ``numba`` or ``reference``."""
        return _choose(device, depthwise, self.use_triton, self.use_numba)

    def __repr__(self) -> str:
        return (
            f"AutoDeform(deterministic={self.deterministic}, triton={self.use_triton}, "
            f"numba={self.use_numba})"
        )
