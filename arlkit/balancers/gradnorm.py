"""Adaptive weight of the adversarial term: the gradient-norm ratio (VQGAN, ARL).

``λ = scale · ||∇_w L_ref|| / (||∇_w L_adv|| + ε)`` with ``w`` one shared parameter (the
last layer of the reconstruction decoder), so that the adversarial gradient reaching the
decoder has ``scale`` times the size of the reconstruction gradient whatever the loss
scales are. λ is detached, computed from float32 norms (the ratio clamped to
``[0, max_weight]`` before ``scale`` multiplies it), replaced by ``fallback`` when not
finite, and in distributed runs the two gradients are averaged over processes before their
norms are taken, so that every process uses the λ of the global batch.

The total is ``Σ_{k ≠ adv} L_k + λ · L_adv`` (for ARL: ``L_SD + (L_MIM + λ·L_adv)``).

Because λ rescales the adaptive gradient to the reference's, a constant factor on ``L_adv``
cancels: ``λ(c·L_adv) · c·L_adv = λ(L_adv) · L_adv`` (up to ε). A recipe weight on the
adaptive objective would therefore do nothing, so the engine refuses one
(:attr:`GradNormRatio.cancels_weight_of`); ``scale`` (VQGAN's ``discriminator_weight``)
sets the adversarial strength instead.

Example::

    balancer = GradNormRatio(reference="mim", adaptive="speckle_gan")
    total, weights = balancer({"mim": l_mim, "speckle_gan": l_adv}, decoder.proj.weight)
    total.backward()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from arlkit.balancers._util import check_scalars, zero_like_first
from arlkit.errors import ConfigError

__all__ = ["GradNormRatio", "grad_norm"]


def grad_norm(loss: Tensor, param: Tensor) -> Tensor | None:
    """``||∂loss/∂param||₂`` in float32, without touching ``param.grad``.

    Args:
        loss: scalar tensor.
        param: tensor the loss depends on (requires grad).

    Returns:
        0-dim tensor (float32, or float64 for a float64 ``param``), or None when
        ``loss`` does not depend on ``param``.
    """
    (grad,) = torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    if grad.dtype not in (torch.float32, torch.float64):
        grad = grad.float()  # bf16/fp16 gradients: sum their squares in float32
    return torch.linalg.vector_norm(grad)


class GradNormRatio:
    """Total loss with the adversarial term weighted by the gradient-norm ratio.

    Args:
        reference: name of the loss whose gradient sets the scale (``L_MIM``).
        adaptive: name of the loss that gets the weight λ (``L_adv^(G)``).
        max_weight: upper clamp of the ratio (the lower clamp is 0).
        scale: multiplies the clamped ratio: λ = scale · clamp(ratio), VQGAN's
            ``discriminator_weight`` (the knob for the adversarial strength; 1 in ARL).
        eps: added to the adaptive gradient norm.
        fallback: λ used when the ratio is not finite (counted in
            :attr:`nonfinite_count`, warned about once); must be in ``[0, max_weight]``.
        every: recompute λ on every ``every``-th call with an active adaptive term
            and reuse the last value in between (saves two ``autograd.grad`` calls).

    Raises:
        ConfigError: bad option values.
    """

    #: Attributes naming losses whose recipe weight cancels out in the total (the engine
    #: refuses a weight other than 0 or 1 there, as it would silently do nothing).
    cancels_weight_of: ClassVar[tuple[str, ...]] = ("adaptive",)

    def __init__(
        self,
        reference: str = "mim",
        adaptive: str = "speckle_gan",
        max_weight: float = 1e4,
        eps: float = 1e-4,
        fallback: float = 0.0,
        every: int = 1,
        scale: float = 1.0,
    ) -> None:
        if reference == adaptive:
            raise ConfigError(
                f"gradnorm_ratio: reference and adaptive are both {reference!r}; name two losses"
            )
        if not (math.isfinite(max_weight) and max_weight >= 0):
            raise ConfigError(
                f"gradnorm_ratio: max_weight must be finite and >= 0, got {max_weight}"
            )
        if not (math.isfinite(eps) and eps >= 0):
            raise ConfigError(f"gradnorm_ratio: eps must be finite and >= 0, got {eps}")
        if not (math.isfinite(fallback) and 0 <= fallback <= max_weight):
            raise ConfigError(
                f"gradnorm_ratio: fallback must be in [0, max_weight={max_weight}], got {fallback}"
            )
        if every < 1:
            raise ConfigError(f"gradnorm_ratio: every must be >= 1, got {every}")
        if not (math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"gradnorm_ratio: scale must be finite and >= 0, got {scale}")
        self.reference = reference
        self.adaptive = adaptive
        self.max_weight = float(max_weight)
        self.eps = float(eps)
        self.fallback = float(fallback)
        self.every = int(every)
        self.scale = float(scale)
        self.calls = 0  # calls with an active adaptive term
        self.last_lambda = 0.0
        self.nonfinite_count = 0

    def __call__(
        self, losses: Mapping[str, Tensor], param: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Combine the losses.

        Args:
            losses: already-weighted scalar losses by objective name; must hold
                ``reference``; ``adaptive`` may be absent or an exact zero without
                gradient (GAN warm-up), then it contributes 0 and no gradient is taken.
            param: the shared parameter ``w`` (e.g. the decoder's last-layer weight).

        Returns:
            ``(total, weights)``: the scalar total and, for logging, the weight of
            every loss plus ``"lambda"``.

        Raises:
            ConfigError: the reference loss is missing, a loss is not a scalar, or
                ``param`` is not used by the reference or adaptive loss.
        """
        check_scalars(losses, "gradnorm_ratio")
        if self.reference not in losses:
            raise ConfigError(
                f"gradnorm_ratio: no loss named {self.reference!r} (reference) among "
                f"{sorted(losses)}; set reference= to one of them"
            )
        weights = {name: 1.0 for name in losses if name != self.adaptive}
        total = sum(
            (loss for name, loss in losses.items() if name != self.adaptive),
            zero_like_first(losses),
        )
        adv = losses.get(self.adaptive)
        if adv is None or not adv.requires_grad:
            weights[self.adaptive] = weights["lambda"] = 0.0
            return total, weights
        if self.calls % self.every == 0:
            self.last_lambda = self._compute(losses[self.reference], adv, param)
        self.calls += 1
        lam = self.last_lambda
        weights[self.adaptive] = weights["lambda"] = lam
        return total + lam * adv, weights

    def _compute(self, ref: Tensor, adv: Tensor, param: Tensor) -> float:
        if not param.requires_grad:
            raise ConfigError(
                "gradnorm_ratio: the balancing parameter does not require grad; pass a trainable "
                "tensor such as the decoder's last-layer weight"
            )
        grads: list[Tensor] = []
        for name, loss in ((self.reference, ref), (self.adaptive, adv)):
            (g,) = torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)
            if g is None:
                raise ConfigError(
                    f"gradnorm_ratio: loss {name!r} does not depend on the balancing parameter; "
                    "pass a parameter both losses flow through (the decoder's last layer)"
                )
            # at least float32 (a bf16 gradient under autocast), float64 stays float64
            grads.append(g.float() if g.dtype in (torch.float16, torch.bfloat16) else g)
        both = torch.stack(grads)  # (2, *param.shape)
        if dist.is_available() and dist.is_initialized():
            # Average the gradients, not their norms: λ is then the ratio of the global
            # batch's gradient norms, the same on every process and as on one process.
            dist.all_reduce(both)
            both = both / dist.get_world_size()
        both = torch.linalg.vector_norm(both.flatten(1), dim=1)  # (2,)
        ref_norm, adv_norm = (float(v) for v in both.tolist())
        denom = adv_norm + self.eps
        lam = ref_norm / denom if denom > 0 else math.inf  # NaN > 0 is False: also inf
        if not (math.isfinite(ref_norm) and math.isfinite(adv_norm) and math.isfinite(lam)):
            self.nonfinite_count += 1
            if self.nonfinite_count == 1:
                warnings.warn(
                    f"gradnorm_ratio: non-finite gradient norm (||∇{self.reference}||={ref_norm}, "
                    f"||∇{self.adaptive}||={adv_norm}); using fallback λ={self.fallback} "
                    "(further occurrences are only counted)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return self.fallback
        return self.scale * min(max(lam, 0.0), self.max_weight)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, loadable with ``torch.load(weights_only=True)``."""
        return {
            "calls": self.calls,
            "last_lambda": self.last_lambda,
            "nonfinite_count": self.nonfinite_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.calls = int(state["calls"])
        self.last_lambda = float(state["last_lambda"])
        self.nonfinite_count = int(state["nonfinite_count"])

    def __repr__(self) -> str:
        return (
            f"GradNormRatio(reference={self.reference!r}, adaptive={self.adaptive!r}, "
            f"max_weight={self.max_weight}, eps={self.eps}, fallback={self.fallback}, "
            f"every={self.every}, scale={self.scale})"
        )
