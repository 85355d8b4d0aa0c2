"""Registers arlkit's built-in heads through the same hooks a third-party plugin uses.

The heads registry injects ``in_dim``: the embedding width for ``dino_head``, the
number of image channels for ``patch_discriminator``.
"""

from __future__ import annotations

from arlkit.hookspecs import hookimpl
from arlkit.models.discriminator import PatchDiscriminator
from arlkit.models.heads import DINOHead
from arlkit.registry import Registrar


@hookimpl
def arlkit_register_heads(register: Registrar) -> None:
    register.add("dino_head", DINOHead)
    register.add("patch_discriminator", PatchDiscriminator)
