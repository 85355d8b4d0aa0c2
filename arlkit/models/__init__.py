"""Models: the ACDT block, the A-ViT backbone, offset networks (and heads, decoders, ...).

Submodules are imported on demand (``from arlkit.models.avit import AViT``) so that
importing one model does not import the others.
"""

from __future__ import annotations

__all__: list[str] = []
