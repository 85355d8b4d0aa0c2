"""Registers the built-in conditioners through the same hook a third-party plugin uses."""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl


@hookimpl
def arlkit_register_conditioners(register: Any) -> None:
    from arlkit.conditioners import OneHotConditioner, SoftEmbeddingConditioner

    register.add("onehot", OneHotConditioner)
    register.add("soft_embedding", SoftEmbeddingConditioner)
