"""Helpers shared by the balancers."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from arlkit.errors import ConfigError

__all__ = ["check_scalars", "zero_like_first"]


def zero_like_first(losses: Mapping[str, Tensor]) -> Tensor:
    """A float32 scalar zero on the device of the first loss (start of a sum)."""
    first = next(iter(losses.values()))
    return torch.zeros((), device=first.device, dtype=torch.float32)


def check_scalars(losses: Mapping[str, Tensor], who: str) -> None:
    """Raise ConfigError unless ``losses`` is a non-empty mapping of 0-dim tensors."""
    if not losses:
        raise ConfigError(f"{who}: no losses to combine")
    for name, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ConfigError(f"{who}: loss {name!r} must be a scalar tensor, got {shape}")
