"""Registers arlkit's built-in losses through the same hooks a third-party plugin uses."""

from __future__ import annotations

from arlkit.hookspecs import hookimpl
from arlkit.losses import (
    KoLeoLoss,
    MIMLoss,
    PatchDistillationLoss,
    SelfDistillationLoss,
    SpeckleGANLoss,
)
from arlkit.registry import Registrar


@hookimpl
def arlkit_register_losses(register: Registrar) -> None:
    register.add("mim", MIMLoss)
    register.add("speckle_gan", SpeckleGANLoss)
    register.add("self_distillation", SelfDistillationLoss)
    register.add("patch_distillation", PatchDistillationLoss)
    register.add("koleo", KoLeoLoss)
