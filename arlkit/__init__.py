"""arlkit: anatomy-aware self-supervised pretraining for medical ultrasound.

Importing ``arlkit`` registers the A-ViT models with timm (so it imports torch and
timm) and loads no plugin: registries fill themselves on first use (see
:mod:`arlkit.plugins`).
"""

from __future__ import annotations

from typing import Any

from arlkit.models import timm_models as _timm_models  # noqa: F401  (avit_* in timm)

__version__ = "0.1.0"
__all__ = ["__version__", "load_backbone"]


def load_backbone(path: str, map_location: Any = "cpu") -> Any:
    """Rebuild an exported backbone (``arlkit export``) with its weights, in eval mode."""
    from arlkit.engine.export import load_backbone as _load

    return _load(path, map_location)
