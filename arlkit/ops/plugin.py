"""Registers the built-in deformable operators (``reference``, ``numba``, ``torchvision``).

The fused kernels (``triton``, ``auto``) register from :mod:`arlkit.ops.plugin_triton`.
"""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl
from arlkit.ops import DeformOp


def reference() -> DeformOp:
    """Pure-PyTorch gather-based operator (CPU and GPU, fp32/bf16/fp64); the default."""
    from arlkit.ops.reference import deform_conv_reference

    return deform_conv_reference


def numba() -> DeformOp:
    """Fused CPU kernels compiled by Numba (depthwise weights; the ``cpu`` extra).

    Raises:
        ConfigError: Numba is not installed.
    """
    from arlkit.ops.numba_deform import deform_conv_numba, numba_available, unavailable_error

    if not numba_available():
        raise unavailable_error()
    return deform_conv_numba


def torchvision() -> DeformOp:
    """``torchvision.ops.deform_conv2d`` behind the arlkit contract (slow; for checking)."""
    from arlkit.ops.tv import deform_conv_torchvision

    return deform_conv_torchvision


@hookimpl
def arlkit_register_deform_ops(register: Any) -> None:
    register.add("reference", reference)
    register.add("numba", numba)
    register.add("torchvision", torchvision)
