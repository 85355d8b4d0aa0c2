"""Loss balancers: combine named losses into the total, and report the weights used.

Call signature shared by all balancers::

    total, weights = balancer(losses: dict[str, Tensor], param: Tensor)

The balancers use only torch and take a dict of plain loss tensors (importing them imports
``arlkit``, which registers its models with timm).
"""

from __future__ import annotations

from arlkit.balancers.fixed import FixedWeights
from arlkit.balancers.gradnorm import GradNormRatio, grad_norm

__all__ = ["FixedWeights", "GradNormRatio", "grad_norm"]
