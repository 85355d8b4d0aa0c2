"""AdamW with parameter groups: no weight decay on norms, biases, embeddings and tokens."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["param_groups"]

_NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "mask_token", "embedding", "embed.weight")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    # 1-D tensors are biases and norm scales; embeddings and learned tokens are tables
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_KEYWORDS)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups, ``decay`` and ``no_decay`` (``weight_decay`` is set per step by the
    engine on groups whose ``apply_wd`` is True). Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "apply_wd": True, "name": "decay"},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0, "name": "no_decay"},
    ]
