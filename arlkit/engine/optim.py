"""AdamW with parameter groups: no weight decay on norms, biases, embeddings and tokens."""

from __future__ import annotations

from torch import nn

__all__ = ["param_groups"]

# learned tokens and tables held as bare parameters, matched on the parameter's own name: a
# layer merely *called* ``embed`` (the MIM decoder's input Linear) is a projection and decays,
# as in MAE and timm
_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "mask_token", "embedding")


def _no_decay_ids(model: nn.Module) -> set[int]:
    """ids of the parameters without weight decay: 1-D tensors (biases, norm scales), biases,
    the tables of embedding layers, learned tokens, and what a module's timm-style
    ``no_weight_decay()`` names (relative to that module)."""
    ids: set[int] = set()
    for module in model.modules():
        table = isinstance(module, nn.Embedding | nn.EmbeddingBag)
        for name, param in module.named_parameters(recurse=False):
            if param.ndim <= 1 or name == "bias" or table or name.endswith(_NO_DECAY_SUFFIXES):
                ids.add(id(param))
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            own = dict(module.named_parameters())
            ids.update(id(own[n]) for n in listed() if n in own)
    return ids


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups, ``decay`` and ``no_decay`` (``weight_decay`` is set per step by the
    engine on groups whose ``apply_wd`` is True). Frozen parameters are left out."""
    skip = _no_decay_ids(model)
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if id(param) in skip else decay).append(param)
    return [
        {"params": decay, "apply_wd": True, "name": "decay"},
        {"params": no_decay, "apply_wd": False, "weight_decay": 0.0, "name": "no_decay"},
    ]
