"""Registers arlkit's built-in balancers through the same hooks a third-party plugin uses."""

from __future__ import annotations

from arlkit.balancers import FixedWeights, GradNormRatio
from arlkit.hookspecs import hookimpl
from arlkit.registry import Registrar


@hookimpl
def arlkit_register_balancers(register: Registrar) -> None:
    register.add("gradnorm_ratio", GradNormRatio)
    register.add("fixed", FixedWeights)
