"""End-to-end fine-tuning of a backbone with a linear head (the MAE/BEiT recipe, small).

AdamW with layer-wise learning-rate decay (block ``i`` of ``L`` gets
``lr · decay^(L + 1 - (i + 1))``; embeddings ``decay^(L+1)``; the head the full rate),
stochastic depth increasing linearly over the blocks, linear warm-up then cosine decay.
The epoch with the best validation balanced accuracy is kept and scored on the test split.
The backbone passed in is copied, never modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader

from arlkit.data.condition import batch_condition, condition_keys
from arlkit.errors import ConfigError
from arlkit.eval.badfiles import BadFiles
from arlkit.eval.features import POOLS, collate_samples, pool_tokens

__all__ = [
    "Classifier",
    "FinetuneResult",
    "finetune_classifier",
    "layer_decay_groups",
    "layer_id",
    "make_optimizer",
    "set_drop_path",
    "warmup_cosine",
]

_EMBED_PREFIXES = ("cls_token", "mask_token", "pos_embed", "patch_embed", "reg_token")


def layer_id(name: str, depth: int) -> int:
    """Depth of parameter ``name``: 0 embeddings, ``i + 1`` for ``blocks.i``, ``depth + 1`` else.

    Names may carry a wrapper prefix (``model.blocks.3.attn...`` of a timm wrapper).
    """
    parts = name.split(".")
    for j, part in enumerate(parts):
        if part in _EMBED_PREFIXES:
            return 0
        if part == "blocks" and j + 1 < len(parts) and parts[j + 1].isdigit():
            return int(parts[j + 1]) + 1
    return depth + 1


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    depth: int,
    no_weight_decay: set[str] = frozenset(),
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise learning-rate decay.

    Args:
        model: the module whose trainable parameters are grouped (names relative to it).
        lr: learning rate of the top (head) layer.
        weight_decay: applied to matrices; biases, norms and listed names get none.
        layer_decay: factor per layer towards the input (1 = no decay).
        depth: number of transformer blocks.
        no_weight_decay: exact parameter names without weight decay.

    Returns:
        groups with ``params``, ``lr``, ``weight_decay`` and ``lr_scale``.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth)
        decay = param.ndim > 1 and name not in no_weight_decay and not name.endswith(_EMBED_PREFIXES)
        scale = layer_decay ** (depth + 1 - lid)
        group = groups.setdefault((lid, decay), {
            "params": [], "lr": lr * scale, "lr_scale": scale,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 to ``rate`` over ``backbone.blocks``.

    Works with any block holding ``drop_path1``/``drop_path2`` (timm ViT, A-ViT).

    Raises:
        ConfigError: ``rate > 0`` on a backbone without such blocks.
    """
    blocks = list(getattr(backbone, "blocks", []) or getattr(getattr(backbone, "model", None), "blocks", []))
    if not blocks or not all(hasattr(b, "drop_path1") for b in blocks):
        if rate > 0:
            raise ConfigError("--drop-path: the backbone has no timm-style blocks; use --drop-path 0")
        return
    for i, blk in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        for attr in ("drop_path1", "drop_path2"):
            setattr(blk, attr, DropPath(r) if r > 0 else nn.Identity())


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def make_optimizer(
    model: nn.Module, backbone_attr: str, lr: float, weight_decay: float, layer_decay: float, depth: int
) -> torch.optim.AdamW:
    """AdamW over ``model`` with layer decay applied to the parameters under ``backbone_attr``."""
    backbone = getattr(model, backbone_attr)
    nwd = {f"{backbone_attr}.{n}" for n in getattr(backbone, "no_weight_decay", lambda: set())()}
    groups = layer_decay_groups(model, lr, weight_decay, layer_decay, depth, nwd)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


class Classifier(nn.Module):
    """Backbone + pooling + linear head.

    Args:
        backbone: follows the backbone contract.
        num_classes: outputs.
        pool: ``cls``, ``avg`` or ``cls+avg``.
        use_organ: pass the organ condition to the backbone.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pool: str = "cls+avg",
                 use_organ: bool = True) -> None:
        super().__init__()
        if pool not in POOLS:  # before a head of the wrong width is built
            raise ConfigError(f"Classifier: pool {pool!r}: choose one of {', '.join(POOLS)}")
        self.backbone, self.pool, self.use_organ = backbone, pool, use_organ
        dim = backbone.embed_dim * (2 if pool == "cls+avg" else 1)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # as MAE's main_finetune.py
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, organ: Any = None) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, 1, H, W)``; ``organ``: the condition."""
        tokens = self.backbone.forward_features(x, organ if self.use_organ else None)
        return self.head(pool_tokens(tokens, int(self.backbone.num_prefix_tokens), self.pool))


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune_classifier`.

    Attributes:
        test_probs: ``(N_test, C)`` probabilities of the kept epoch.
        best_epoch: the kept epoch (by validation balanced accuracy), counted from 1.
        val_scores: validation balanced accuracy per epoch (empty without a validation
            split, when the last epoch is kept).
        steps: optimizer steps taken.
        test_labels: ``(N_test,)`` labels of the scored (readable) test images.
        bad_files: ``[{"split", "path", "reason"}]`` of the unreadable images left out.
    """

    test_probs: np.ndarray
    best_epoch: int
    val_scores: list[float] = field(default_factory=list)
    steps: int = 0
    test_labels: np.ndarray | None = None
    bad_files: list[dict[str, str]] = field(default_factory=list)


def batches(dataset: Any, batch_size: int, shuffle: bool, seed: int, workers: int,
            drop_last: bool = False) -> DataLoader:
    """A DataLoader of :func:`~arlkit.eval.features.collate_samples` batches, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      num_workers=workers, collate_fn=collate_samples, drop_last=drop_last)


def schedule(epochs: int, steps: int | None, per_epoch: int) -> tuple[int, int]:
    """``(epochs, total_steps)``: ``steps`` (when given) overrides ``epochs``."""
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        return math.ceil(steps / per_epoch), steps
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    return epochs, epochs * per_epoch


def condition(model: nn.Module, batch: dict[str, Any], device: torch.device) -> Any:
    """The condition of a batch for ``model`` (organ indices, plus the side information its
    backbone's conditioners read)."""
    return batch_condition(batch, condition_keys(model), device)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            bad: BadFiles | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, C), labels (N,))`` of a classifier over a loader.

    Unreadable images are left out and recorded in ``bad``.

    Raises:
        DataError: not one image of the loader could be read.
    """
    model.eval()
    probs, labels = [], []
    for batch in loader:
        if bad is not None:
            bad.add(batch)
        if "image" in batch:
            probs.append(model(batch["image"].to(device), condition(model, batch, device)).softmax(-1).cpu())
            labels.append(batch["label"])
    if not probs:
        raise (bad if bad is not None else BadFiles("evaluated")).error("prediction")
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def _balanced(probs: np.ndarray, labels: np.ndarray) -> float:
    pred = probs.argmax(1)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def fit_best_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    *,
    lr: float,
    epochs: int,
    total: int,
    warmup: int,
    loss_of: Callable[[dict[str, Any]], torch.Tensor | None],
    score: Callable[[], float] | None,
    metric: str,
    train_mode: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    bad: BadFiles | None = None,
) -> tuple[int, list[float], int]:
    """The loop shared by fine-tuning and segmentation.

    Trains ``epochs`` passes (at most ``total`` optimizer steps) under the warm-up cosine
    rate of every parameter group (``lr · lr_scale``), scores the model after each epoch
    and leaves it with the weights of the best epoch.

    Args:
        loss_of: the loss of a batch, or None to skip the batch (it costs no step).
        score: validation score after an epoch (higher is better); None (no validation
            split) keeps the last epoch and records no score.
        metric: the score's name in the log lines.
        train_mode: puts the model in training mode (default ``model.train()``).
        bad: records the unreadable training images (left out of their batches).

    Returns:
        ``(best epoch, scores, steps)``: the kept epoch counted from 1 (as in the log
        lines), the score of every epoch (empty without ``score``) and the optimizer steps
        taken.

    Raises:
        DataError: not one training image could be read.
    """
    best: tuple[float, int, dict[str, torch.Tensor] | None] | None = None
    scores: list[float] = []
    step = 0
    for epoch in range(epochs):
        (train_mode or model.train)()
        readable = False
        for batch in loader:
            if bad is not None:
                bad.add(batch)
            if "image" not in batch:
                continue
            readable = True
            loss = loss_of(batch)
            if loss is None:
                continue
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"] * warmup_cosine(step, total, warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= total:
                break
        if not readable and epoch == 0:
            raise (bad if bad is not None else BadFiles("train")).error("training")
        if score is None:  # no validation split: the last epoch is kept, nothing scored
            best = (float("nan"), epoch + 1, None)
            if log:
                log(f"epoch {epoch + 1}/{epochs}")
        else:
            value = score()
            scores.append(value)
            if best is None or value > best[0]:
                best = (value, epoch + 1, copy.deepcopy(model.state_dict()))
            if log:
                log(f"epoch {epoch + 1}/{epochs}: val {metric} {value:.4f}")
        if step >= total:
            break
    if best is None:
        raise ConfigError("fine-tuning ran no epoch: give at least one epoch or step")
    if best[2] is not None:
        model.load_state_dict(best[2])
    return best[1], scores, step


def finetune_classifier(
    backbone: nn.Module,
    train: Any,
    val: Any,
    test: Any,
    num_classes: int,
    *,
    epochs: int = 50,
    steps: int | None = None,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    drop_path: float = 0.1,
    warmup_fraction: float = 0.1,
    batch_size: int = 32,
    pool: str = "cls+avg",
    use_organ: bool = True,
    device: torch.device | str = "cpu",
    workers: int = 0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` with a linear head; score the best epoch on ``test``.

    Args:
        backbone: the pretrained backbone (copied).
        train, val, test: map-style datasets of sample dicts with ``label``.
        num_classes: number of classes.
        epochs: passes over ``train`` (``steps`` overrides).
        steps: total optimizer steps.
        lr: learning rate of the head; blocks get layer-decayed rates.
        weight_decay, layer_decay, drop_path, warmup_fraction: see the module docstring.
        batch_size, pool, use_organ, device, workers, seed: as named.
        log: receives one line per epoch.

    Returns:
        The :class:`FinetuneResult`.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    net = copy.deepcopy(backbone)
    set_drop_path(net, drop_path)
    model = Classifier(net, num_classes, pool, use_organ).to(device)
    depth = int(getattr(net, "depth", len(getattr(net, "blocks", []))))
    drop_last = len(train) > batch_size
    loader = batches(train, batch_size, True, seed, workers, drop_last)
    epochs, total = schedule(epochs, steps, max(1, len(loader)))
    opt = make_optimizer(model, "backbone", lr, weight_decay, layer_decay, depth)
    warmup = int(warmup_fraction * total)
    val_loader = batches(val, batch_size, False, seed, workers) if len(val) else None
    loss_fn = nn.CrossEntropyLoss()
    bad = {s: BadFiles(s) for s in ("train", "val", "test")}

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:
        logits = model(batch["image"].to(device), condition(model, batch, device))
        return loss_fn(logits, batch["label"].to(device))

    def score() -> float:
        return _balanced(*predict(model, val_loader, device, bad["val"]))

    best_epoch, scores, step = fit_best_epoch(
        model, loader, opt, lr=lr, epochs=epochs, total=total, warmup=warmup, loss_of=loss_of,
        score=score if val_loader is not None else None, metric="balanced accuracy", log=log,
        bad=bad["train"])
    probs, labels = predict(model, batches(test, batch_size, False, seed, workers), device,
                            bad["test"])
    return FinetuneResult(probs, best_epoch, scores, step, labels,
                          [r for b in bad.values() for r in b.records()])
