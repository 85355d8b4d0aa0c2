"""Semantic segmentation with a UPerNet head on four intermediate levels of the backbone.

The backbone is fine-tuned with layer-wise learning-rate decay (or frozen with
``freeze_backbone``); the decoder is :class:`arlkit.models.upernet.UPerNet` through a
simple feature pyramid. The loss is cross-entropy plus soft Dice; the epoch with the best
validation Dice is kept and its test predictions are returned for scoring (Dice, mIoU).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.data.dataset import NO_MASK
from arlkit.errors import ConfigError, DataError
from arlkit.eval.badfiles import BadFiles
from arlkit.eval.finetune import (
    batches,
    condition,
    fit_best_epoch,
    make_optimizer,
    schedule,
    set_drop_path,
)
from arlkit.eval.metrics import confusion_matrices, dice_from_confusion
from arlkit.models.upernet import UPerNet

__all__ = [
    "SegmentationModel",
    "SegmentationResult",
    "decoder_width",
    "level_indices",
    "soft_dice_loss",
    "train_segmentation",
]


def level_indices(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread over ``depth`` blocks, the last one included.

    ``depth=12`` → ``[2, 5, 8, 11]``; shallower backbones repeat blocks (``depth=2`` →
    ``[0, 0, 1, 1]``).
    """
    return [math.ceil((i + 1) * depth / n) - 1 for i in range(n)]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``1 −`` mean soft Dice over the foreground classes, pooled over the batch (nnU-Net style).

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` classes; ``ignore_index`` pixels do not count.
        ignore_index: label of unlabelled pixels.

    Returns:
        scalar loss in [0, 1].
    """
    k = logits.shape[1]
    valid = (target != ignore_index)[:, None]  # (B, 1, H, W)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2) * valid  # (B, K, H, W)
    inter = (probs * onehot).sum((0, 2, 3))[1:]
    denom = (probs + onehot).sum((0, 2, 3))[1:]
    return 1 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def decoder_width(embed_dim: int) -> int:
    """Default UPerNet width: half the backbone's, within 64..512 (mmseg's ViT-B uses 512)."""
    return int(min(512, max(64, embed_dim // 2)))


class SegmentationModel(nn.Module):
    """Backbone intermediates → UPerNet → logits at the input's size.

    Args:
        backbone: follows the backbone contract (``forward_intermediates``).
        num_classes: classes, background included.
        channels: decoder width.
        indices: the four blocks read (default: :func:`level_indices`).
        use_organ: pass the organ condition to the backbone.
        freeze_backbone: no gradient through the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        channels: int = 128,
        indices: Sequence[int] | None = None,
        use_organ: bool = True,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        depth = int(getattr(backbone, "depth", len(getattr(backbone, "blocks", []))))
        self.indices = list(indices) if indices is not None else level_indices(depth)
        self.use_organ, self.freeze_backbone = use_organ, freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)
        self.head = UPerNet(int(backbone.embed_dim), num_classes, channels)

    def forward(self, x: torch.Tensor, organ: Any = None) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` of images ``(B, 1, H, W)``; ``organ``: the condition."""
        unique = sorted(set(self.indices))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            feats = self.backbone.forward_intermediates(
                x, organ=organ if self.use_organ else None, indices=unique, norm=False,
                output_fmt="NCHW", intermediates_only=True,
            )  # [(B, C, H/p, W/p)] per unique index
        by_index = dict(zip(unique, feats))
        return self.head([by_index[i] for i in self.indices], x.shape[-2:])


@dataclass
class SegmentationResult:
    """Outcome of :func:`train_segmentation`.

    Attributes:
        pred: ``(N, H, W)`` int64 test predictions of the kept epoch.
        target: ``(N, H, W)`` int64 test masks.
        best_epoch: the kept epoch (by validation Dice), counted from 1.
        val_scores: validation Dice per epoch.
        steps: optimizer steps taken.
        bad_files: ``[{"split", "path", "reason"}]`` of the unreadable images left out.
    """

    pred: np.ndarray
    target: np.ndarray
    best_epoch: int
    val_scores: list[float] = field(default_factory=list)
    steps: int = 0
    bad_files: list[dict[str, str]] = field(default_factory=list)


@torch.no_grad()
def predict_masks(model: nn.Module, loader: Any, device: torch.device,
                  bad: BadFiles | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions (N, H, W), masks (N, H, W))`` over a loader (unreadable images left
    out and recorded in ``bad``).

    Raises:
        DataError: not one image of the loader could be read.
    """
    model.eval()
    preds, masks = [], []
    for batch in loader:
        if bad is not None:
            bad.add(batch)
        if "image" in batch:
            preds.append(model(batch["image"].to(device), condition(model, batch, device)).argmax(1).cpu())
            masks.append(batch["mask"])
    if not preds:
        raise (bad if bad is not None else BadFiles("evaluated")).error("prediction")
    return torch.cat(preds).numpy(), torch.cat(masks).numpy()


def train_segmentation(
    backbone: nn.Module,
    train: Any,
    val: Any,
    test: Any,
    num_classes: int,
    *,
    epochs: int = 20,
    steps: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    drop_path: float = 0.1,
    warmup_fraction: float = 0.1,
    batch_size: int = 16,
    channels: int | None = None,
    freeze_backbone: bool = False,
    use_organ: bool = True,
    device: torch.device | str = "cpu",
    workers: int = 0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> SegmentationResult:
    """Train UPerNet on a copy of ``backbone``; predict the test split with the best epoch.

    Args:
        backbone: the pretrained backbone (copied, never modified).
        train, val, test: datasets whose samples carry ``mask`` ``(H, W)``.
        num_classes: mask classes, background included.
        epochs, steps, lr, weight_decay, layer_decay, drop_path, warmup_fraction: the
            schedule, as in :func:`arlkit.eval.finetune.finetune_classifier` (``lr`` is the
            decoder's).
        batch_size: images per step (the last incomplete batch is dropped: BatchNorm).
        channels: decoder width (None: :func:`decoder_width` of the backbone).
        freeze_backbone: train the decoder only.
        use_organ, device, workers, seed: as named.
        log: receives one line per epoch.

    Returns:
        The :class:`SegmentationResult`.

    Raises:
        ConfigError: fewer than two training images.
        DataError: no readable training image, or none with a labelled pixel (a batch
            without one, of rows that have no mask, is skipped and costs no step).
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    net = copy.deepcopy(backbone)
    set_drop_path(net, 0.0 if freeze_backbone else drop_path)
    channels = channels or decoder_width(int(net.embed_dim))
    model = SegmentationModel(net, num_classes, channels, use_organ=use_organ,
                              freeze_backbone=freeze_backbone).to(device)
    depth = int(getattr(net, "depth", len(getattr(net, "blocks", []))))
    if len(train) < 2:
        raise ConfigError(
            f"segmentation: {len(train)} training image(s); the decoder's BatchNorm needs at "
            "least 2 (raise --n-train or the label fraction)"
        )
    # BatchNorm needs two images per batch: full batches only (when there are several)
    loader = batches(train, batch_size, True, seed, workers, drop_last=len(train) > batch_size)
    epochs, total = schedule(epochs, steps, max(1, len(loader)))
    opt = make_optimizer(model, "backbone", lr, weight_decay, layer_decay, depth)
    warmup = int(warmup_fraction * total)
    val_loader = batches(val, batch_size, False, seed, workers) if len(val) else None
    loss_fn = nn.CrossEntropyLoss()
    bad = {s: BadFiles(s) for s in ("train", "val", "test")}

    def loss_of(batch: dict[str, Any]) -> torch.Tensor | None:
        mask = batch["mask"].to(device)
        if batch["image"].shape[0] < 2:  # BatchNorm
            return None
        if not (mask != NO_MASK).any():
            # no labelled pixel (rows without a mask): cross-entropy is 0 / 0 = NaN, and an
            # AdamW step on zero gradients would still move the weights (momentum, decay)
            return None
        logits = model(batch["image"].to(device), condition(model, batch, device))
        # cross-entropy + Dice: small structures (the LV) are not drowned by background
        return loss_fn(logits, mask) + soft_dice_loss(logits, mask)

    def score() -> float:
        pred, target = predict_masks(model, val_loader, device, bad["val"])
        value = float(dice_from_confusion(confusion_matrices(pred, target, num_classes).sum(0)))
        return value if np.isfinite(value) else 0.0

    def train_mode() -> None:
        model.train()
        if freeze_backbone:
            model.backbone.eval()

    best_epoch, scores, step = fit_best_epoch(
        model, loader, opt, lr=lr, epochs=epochs, total=total, warmup=warmup, loss_of=loss_of,
        score=score if val_loader is not None else None, metric="Dice", train_mode=train_mode,
        log=log, bad=bad["train"])
    if step == 0:
        raise DataError(
            "segmentation: no training batch held a labelled pixel: the training images have "
            "no mask (manifest rows without a mask file are left unlabelled)"
        )
    pred, target = predict_masks(model, batches(test, batch_size, False, seed, workers), device,
                                 bad["test"])
    return SegmentationResult(pred, target, best_epoch, scores, step,
                              [r for b in bad.values() for r in b.records()])
