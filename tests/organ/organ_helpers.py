"""Tiny backbones and their export configuration for the organ tests."""

from __future__ import annotations

from typing import Any

import torch

from arlkit.engine.export import build_backbone


def tiny_config(conditioner: str = "soft_embedding", organs: Any = None) -> dict[str, Any]:
    from arlkit.taxonomy import DEFAULT_ORGANS

    return {
        "backbone": {"name": "avit", "params": dict(size="tiny", embed_dim=32, depth=2, num_heads=2,
                                                     patch_size=8, img_size=32)},
        "conditioner": {"name": conditioner, "params": {}},
        "deform_op": {"name": "reference", "params": {}},
        "offset_net": {"name": "dwconv", "params": {}},
        "taxonomy": list(organs or DEFAULT_ORGANS),
    }


def tiny_backbone(conditioner: str = "soft_embedding", seed: int = 0) -> torch.nn.Module:
    """A 2-block, width-32, 32-px A-ViT whose organ conditioning has a visible effect."""
    torch.manual_seed(seed)
    model = build_backbone(tiny_config(conditioner)).eval()
    # stand in for a trained model: a fresh one has zero-initialised offset networks (so the
    # organ cannot change anything) and near-zero organ embeddings
    for blk in model.blocks:
        torch.nn.init.normal_(blk.offset_net.proj.weight, std=0.05)
        if conditioner == "soft_embedding":
            torch.nn.init.normal_(blk.conditioner.embedding, std=1.0)
    return model

