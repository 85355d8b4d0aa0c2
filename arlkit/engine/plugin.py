"""Registers the engine's built-in objectives through the ``arlkit_register_objectives`` hook."""

from __future__ import annotations

from arlkit.hookspecs import hookimpl
from arlkit.registry import Registrar


@hookimpl
def arlkit_register_objectives(register: Registrar) -> None:
    from arlkit.engine.builtin_objectives import (
        KoLeoObjective,
        MIMObjective,
        PatchDistillationObjective,
        SelfDistillationObjective,
        SpeckleGANObjective,
    )

    register.add("mim", MIMObjective)
    register.add("speckle_gan", SpeckleGANObjective)
    register.add("self_distillation", SelfDistillationObjective)
    register.add("patch_distillation", PatchDistillationObjective)
    register.add("koleo", KoLeoObjective)
