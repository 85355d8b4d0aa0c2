"""Loss balancers: combine named losses into the total, and report the weights used.

Call signature shared by all balancers::

    total, weights = balancer(losses: dict[str, Tensor], param: Tensor)

Importing this package needs only torch.
"""

from __future__ import annotations

from arlkit.balancers.fixed import FixedWeights
from arlkit.balancers.gradnorm import GradNormRatio, grad_norm

__all__ = ["FixedWeights", "GradNormRatio", "grad_norm"]
