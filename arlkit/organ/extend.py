"""Add an organ class to a trained backbone without changing anything it already does.

:func:`add_organ` appends the class to the taxonomy (old indices keep their meaning;
``unknown`` moves from ``K`` to ``K+1``), gives every block's conditioner a new embedding
row (``soft_embedding``) or a new projection column (``onehot``), initialised from the
nearest existing organ (the one the organ head predicts most for the new images) or from
``unknown``, and trains only that new row on a handful of images. Old rows are restored
from a copy after training, so outputs for the old classes stay bit-identical.

The new row is trained self-supervised, in the backbone's own terms: the class token of
a masked image conditioned on the new organ should match that of the full image (an
iBOT-style feature prediction), which shapes the receptive field for the new anatomy. An
organ head, if given, gains a row too, trained by cross-entropy on the same images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError
from arlkit.organ.classifier import OrganClassifier, organ_features
from arlkit.taxonomy import UNKNOWN, Taxonomy

__all__ = ["AddedOrgan", "add_organ", "conditioner_tables"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class AddedOrgan:
    """What :func:`add_organ` did.

    Attributes:
        name: the new class; index: its taxonomy index; init_from: organ it started from.
        taxonomy: the extended taxonomy; loss_first, loss_last: training loss at both ends.
    """

    name: str
    index: int
    init_from: str
    taxonomy: Taxonomy
    loss_first: float
    loss_last: float


def conditioner_tables(backbone: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, parameter name)`` of every conditioner table indexed by organ.

    Raises:
        ConfigError: a conditioner of a kind that cannot be extended.
    """
    out = []
    for blk in getattr(backbone, "blocks", []):
        cond = getattr(blk, "conditioner", None)
        if cond is None:
            continue
        if isinstance(getattr(cond, "embedding", None), nn.Parameter):
            out.append((cond, "embedding"))  # (K+1, C), unknown last
        elif isinstance(getattr(cond, "proj", None), nn.Linear):
            out.append((cond.proj, "weight"))  # (C, K), unknown = zero column
        else:
            raise ConfigError(
                f"organ add: conditioner {type(cond).__name__} has no organ table to extend "
                "(supported: soft_embedding, onehot)"
            )
    if not out:
        raise ConfigError("organ add: the backbone is not organ-conditioned; nothing to extend")
    return out


def _grow(
    module: nn.Module, attr: str, k: int, src: int
) -> tuple[nn.Parameter, torch.Tensor, bool]:
    """Insert a copy of row/column ``src`` at index ``k``; returns the new parameter, old copy
    and the replaced parameter's ``requires_grad`` (what the new one gets back afterwards)."""
    trainable = getattr(module, attr).requires_grad
    old = getattr(module, attr).detach().clone()
    if attr == "embedding":  # rows: organs 0..K-1, new, unknown
        new = torch.cat([old[:k], old[src : src + 1], old[k:]])
    else:  # columns of Linear(K, C).weight; unknown has no column (zero input)
        col = old[:, src : src + 1] if src < k else torch.zeros_like(old[:, :1])
        new = torch.cat([old, col], 1)
    param = nn.Parameter(new)
    setattr(module, attr, param)
    if attr == "weight":
        module.in_features = k + 1
    return param, old, trainable


def _restore(param: nn.Parameter, old: torch.Tensor, attr: str, k: int) -> None:
    with torch.no_grad():
        if attr == "embedding":
            param[:k] = old[:k]
            param[k + 1 :] = old[k:]
        else:
            param[:, :k] = old


def _nearest(head: OrganClassifier | None, feats: torch.Tensor, k: int, min_prob: float) -> int:
    if head is None:
        return k  # unknown
    with torch.no_grad():
        mean = head.probabilities(feats).mean(0)  # (K,)
    return int(mean.argmax()) if float(mean.max()) >= min_prob else k


def add_organ(
    backbone: nn.Module,
    name: str,
    images: torch.Tensor,
    head: OrganClassifier | None = None,
    negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int = 30,
    lr: float = 1e-2,
    mask_ratio: float = 0.4,
    min_prob: float = 0.5,
    seed: int = 0,
) -> AddedOrgan:
    """Add organ ``name`` to ``backbone`` (and ``head``) in place.

    Args:
        backbone: an organ-conditioned backbone (``soft_embedding`` or ``onehot``).
        name: new class, a lower-case identifier not in the taxonomy.
        images: ``(N, in_chans, H, W)`` images of the new organ (a handful suffice).
        head: organ head of this backbone; picks the nearest organ and gains a row.
        negatives: ``(images, organ indices)`` of old organs for the head's new row.
        steps: optimizer steps for the new parameters.
        lr: Adam learning rate.
        mask_ratio: share of patches masked in the feature-prediction objective.
        min_prob: the nearest organ must get this mean probability, else ``unknown``.
        seed: seed of the masks.

    Returns:
        An :class:`AddedOrgan` summary.

    Raises:
        ConfigError: bad name, a name already in the taxonomy, or an unextendable backbone.
    """
    tax: Taxonomy = backbone.taxonomy
    if not _NAME.match(name or "") or name == UNKNOWN:
        raise ConfigError(f"organ add: {name!r} is not a valid organ name (lower-case identifier)")
    if name in tax.organs:
        raise ConfigError(f"organ add: {name!r} is already in the taxonomy ({', '.join(tax.organs)})")
    if head is not None and (head.taxonomy.organs != tax.organs
                             or head.fc.in_features != backbone.embed_dim):
        raise ConfigError(
            "organ add: the organ head was trained for another backbone (taxonomy "
            f"{', '.join(head.taxonomy.organs)}, width {head.fc.in_features}) than this one "
            f"({', '.join(tax.organs)}, width {backbone.embed_dim}); train one on this backbone "
            "with 'arlkit organ train'"
        )
    k = tax.num_classes
    was_training = backbone.training
    backbone.eval()
    feats = organ_features(backbone, images)
    src = _nearest(head, feats, k, min_prob)
    new_tax = tax.extended([name])
    tables = conditioner_tables(backbone)
    flags = [(p, p.requires_grad) for p in backbone.parameters()]
    grown = [(_grow(m, a, k, src), a) for m, a in tables]
    for p in backbone.parameters():
        p.requires_grad_(False)
    for blk in backbone.blocks:
        if getattr(blk, "conditioner", None) is not None:
            blk.conditioner.taxonomy = new_tax
    backbone.taxonomy = new_tax
    params = [p for (p, _, _), _ in grown]
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    organ = torch.full((images.shape[0],), k, dtype=torch.long, device=images.device)
    with torch.no_grad():
        target = F.normalize(backbone.forward_features(images, organ)[:, 0], dim=-1)
    opt = torch.optim.Adam(params, lr=lr)
    n = backbone.patch_embed(images[:1]).shape[1]
    losses = []
    for _ in range(steps):
        mask = torch.rand(images.shape[0], n, generator=gen) < mask_ratio  # (N, T)
        mask = mask.to(images.device)
        pred = F.normalize(backbone.forward_features(images, organ, mask=mask)[:, 0], dim=-1)
        loss = (1 - (pred * target).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for (p, old, _), a in grown:
        _restore(p, old, a, k)
    # leave the model as it came (a later fine-tune must still train it): its parameters'
    # requires_grad and its mode; a grown table takes the flag of the one it replaced
    for p, flag in flags:
        p.requires_grad_(flag)
    for (p, _, flag), _ in grown:
        p.requires_grad_(flag)
    backbone.train(was_training)
    if head is not None:
        _grow_head(head, new_tax, feats, negatives, backbone, src, steps, lr)
    return AddedOrgan(name, k, new_tax.name(src) if src < k else UNKNOWN, new_tax,
                      losses[0] if losses else 0.0, losses[-1] if losses else 0.0)


def _grow_head(head: OrganClassifier, tax: Taxonomy, feats: torch.Tensor,
               negatives: tuple[torch.Tensor, torch.Tensor] | None, backbone: nn.Module,
               src: int, steps: int, lr: float) -> None:
    k = tax.num_classes - 1
    w, b = head.fc.weight.detach().clone(), head.fc.bias.detach().clone()
    init_w = w[src : src + 1] if src < k else torch.zeros_like(w[:1])
    init_b = b[src : src + 1] if src < k else torch.zeros_like(b[:1])
    fc = nn.Linear(w.shape[1], k + 1)
    fc.weight, fc.bias = nn.Parameter(torch.cat([w, init_w])), nn.Parameter(torch.cat([b, init_b]))
    head.fc, head.taxonomy = fc, tax
    x, y = feats, torch.full((feats.shape[0],), k, dtype=torch.long)
    if negatives is not None and negatives[0].shape[0]:
        x = torch.cat([x, organ_features(backbone, negatives[0])])
        y = torch.cat([y, negatives[1]])
    fc.to(w.device)
    keep = torch.zeros(k + 1, 1, device=w.device)
    keep[k] = 1.0  # only the new row moves
    opt = torch.optim.Adam(fc.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fc.weight.grad.mul_(keep)
        fc.bias.grad.mul_(keep[:, 0])
        opt.step()
    with torch.no_grad():
        fc.weight[:k], fc.bias[:k] = w, b
    head.eval()
