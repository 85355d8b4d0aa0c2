"""Constant loss weights, for ablations (e.g. a fixed adversarial weight)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from arlkit.balancers._util import check_scalars, zero_like_first
from arlkit.errors import ConfigError

__all__ = ["FixedWeights"]


class FixedWeights:
    """Total loss ``Σ_k w_k · L_k`` with constant weights.

    Args:
        weights: weight per loss name; names not listed get ``default``.
        default: weight of the losses not named in ``weights``.
        adaptive: the loss whose weight is also logged as ``"lambda"``, so that logs
            line up with :class:`~arlkit.balancers.GradNormRatio`.

    Raises:
        ConfigError: a negative or non-finite weight.

    Example::

        balancer = FixedWeights({"speckle_gan": 0.1})
        total, weights = balancer({"mim": l_mim, "speckle_gan": l_adv})
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        default: float = 1.0,
        adaptive: str = "speckle_gan",
    ) -> None:
        self.weights = {str(k): float(v) for k, v in (weights or {}).items()}
        for name, w in {**self.weights, "(default)": float(default)}.items():
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"fixed: weight of {name!r} must be finite and >= 0, got {w}")
        self.default = float(default)
        self.adaptive = adaptive
        self._warned = False

    def weight(self, name: str) -> float:
        """The weight applied to loss ``name``."""
        return self.weights.get(name, self.default)

    def __call__(
        self, losses: Mapping[str, Tensor], param: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Combine the losses.

        Args:
            losses: scalar losses by name.
            param: ignored (same call signature as the adaptive balancers).

        Returns:
            ``(total, weights)``: the scalar total and the weight of every loss plus
            ``"lambda"`` (the weight of ``adaptive``; 0 when that loss is absent).

        Raises:
            ConfigError: a loss is not a scalar tensor.
        """
        check_scalars(losses, "fixed")
        unknown = sorted(set(self.weights) - set(losses) - {self.adaptive})
        if unknown and not self._warned:
            self._warned = True
            warnings.warn(
                f"fixed: weights name losses that are not computed: {unknown} "
                f"(losses: {sorted(losses)}); check the names",
                stacklevel=2,
            )
        used = {name: self.weight(name) for name in losses}
        total = sum((w * losses[name] for name, w in used.items()), zero_like_first(losses))
        used["lambda"] = used.get(self.adaptive, 0.0)
        return total, used

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the weights come from the recipe."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accepts :meth:`state_dict` output (nothing to restore)."""

    def __repr__(self) -> str:
        return f"FixedWeights(weights={self.weights}, default={self.default})"
