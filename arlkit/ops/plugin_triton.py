"""Registers the fused deform ops ``triton`` and ``auto`` (built-in plugin).

``auto`` (what the shipped recipes choose) uses the Triton kernel on CUDA when Triton is importable,
the Numba kernels on the CPU when Numba is installed, and the ``reference`` op otherwise;
``triton`` insists on the kernel.
"""

from __future__ import annotations

import importlib.util

from arlkit.errors import ConfigError
from arlkit.hookspecs import hookimpl
from arlkit.ops.auto import AutoDeform
from arlkit.ops.custom_op import TritonDeform

__all__ = ["arlkit_register_deform_ops", "auto", "triton"]


def triton(deterministic: bool | None = None) -> TritonDeform:
    """Fused Triton deformable sampling (CUDA; fp32 accumulation, fused fwd/bwd).

    Args:
        deterministic: bitwise-reproducible backward (fixed-point atomics); None follows
            ``torch.are_deterministic_algorithms_enabled()``.

    Raises:
        ConfigError: Triton is not installed.
    """
    if importlib.util.find_spec("triton") is None:
        raise ConfigError(
            "deform op 'triton' needs the 'triton' package and a CUDA GPU; install triton "
            "or use deform_op 'auto' (falls back to 'reference')"
        )
    return TritonDeform(deterministic)


def auto(deterministic: bool | None = None) -> AutoDeform:
    """Triton on CUDA, Numba on the CPU (depthwise weights), else the pure-PyTorch reference.

    Args:
        deterministic: passed to the Triton kernel (None: follow PyTorch's setting).
    """
    return AutoDeform(deterministic)


@hookimpl
def arlkit_register_deform_ops(register) -> None:
    register.add("triton", triton)
    register.add("auto", auto)
