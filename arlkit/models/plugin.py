"""Registers the built-in backbones and offset networks through arlkit's hooks."""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl


@hookimpl
def arlkit_register_backbones(register: Any) -> None:
    from arlkit.models.avit import AViT

    register.add("avit", AViT)


@hookimpl
def arlkit_register_offset_nets(register: Any) -> None:
    from arlkit.models.offset_net import DWConvOffsetNet

    register.add("dwconv", DWConvOffsetNet)
