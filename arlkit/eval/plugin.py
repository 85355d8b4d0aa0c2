"""Registers the evaluation heads (the UPerNet decoder) through arlkit's hooks."""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl


@hookimpl
def arlkit_register_heads(register: Any) -> None:
    from arlkit.models.upernet import UPerNet

    register.add("upernet", UPerNet)
