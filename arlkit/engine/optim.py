"""AdamW with parameter groups: no weight decay on norms, biases, embeddings and tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["clip_gradients", "load_optimizer_state", "param_groups"]

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


@torch.no_grad()
def clip_gradients(
    parameters: Iterable[Tensor], max_norm: float | None, per_parameter: bool = False
) -> Tensor:
    """Clip gradients in place; returns the total gradient norm before clipping.

    Args:
        parameters: the parameters whose ``.grad`` to clip (those without one are skipped).
        max_norm: the bound; None clips nothing (the norm is still returned).
        per_parameter: bound each parameter's gradient norm on its own (DINO's and iBOT's
            ``clip_gradients``: ``g ← g · min(1, max_norm / (‖g‖ + 1e-6))``) instead of the
            norm of all gradients together (``torch.nn.utils.clip_grad_norm_``; DINOv2).

    Returns:
        0-dim float32 tensor ``‖(g_1, …, g_n)‖₂`` (inf or NaN when a gradient is not finite).
    """
    params = list(parameters)
    if not per_parameter:
        return torch.nn.utils.clip_grad_norm_(params, math.inf if max_norm is None else max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one per parameter
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    if max_norm is not None:
        scales = [torch.clamp(max_norm / (n.float() + 1e-6), max=1.0).to(g.dtype)
                  for n, g in zip(norms, grads, strict=True)]
        torch._foreach_mul_(grads, scales)
    return total


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state but keep this optimizer's hyperparameters.

    The moments and step counts come from ``state``; each group's settings (betas, lr, ...)
    stay those the optimizer was built with from the recipe, which a run continued in a new
    directory may have changed (``load_state_dict`` alone would bring back the old ones).
    """
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
