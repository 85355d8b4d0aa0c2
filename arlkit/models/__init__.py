"""Models: the ACDT block, the A-ViT backbone, offset networks, heads, decoders, UPerNet.

The main classes are importable from here (``from arlkit.models import AViT``); each is
imported from its submodule on first access, so importing one model does not import the
others (except A-ViT and its ACDT block, which ``import arlkit`` loads to register them
with timm).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → submodule that defines it
_EXPORTS: dict[str, str] = {
    "ACDTBlock": "acdt",
    "AViT": "avit",
    "DINOHead": "heads",
    "DWConvOffsetNet": "offset_net",
    "MIMDecoder": "decoders",
    "PatchDiscriminator": "discriminator",
    "UPerNet": "upernet",
    "resize_to_patch_multiple": "avit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'arlkit.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"arlkit.models.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
