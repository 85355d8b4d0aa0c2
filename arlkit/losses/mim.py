"""Masked image modelling loss: mean error over the masked patches only.

``L_MIM`` of the paper is the mean squared error between predicted and true pixels
of the masked patches (MAE, SimMIM). The average runs over masked patches, not over
all patches, so the loss does not shrink as the mask ratio falls.

Patches are flattened MAE-style: a ``(B, C, H, W)`` image becomes
``(B, N, P·P·C)`` with ``N = (H/P)·(W/P)`` patches in row-major grid order and the
pixels of one patch in ``(row, column, channel)`` order.

Example::

    pred = decoder(tokens)                       # (B, N, P*P*C)
    loss = mim_loss(pred, images, mask, patch_size=16, norm_pix=True)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from arlkit.errors import ConfigError, DataError
from arlkit.losses.masking import as_bool_mask

__all__ = ["MIMLoss", "mim_loss", "normalize_patches", "patchify", "unpatchify"]

_LOSSES = ("l2", "l1")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened non-overlapping patches.

    Args:
        images: ``(B, C, H, W)`` with ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: side ``P`` of a square patch.

    Returns:
        ``(B, N, P·P·C)`` with ``N = (H/P)·(W/P)``, grid row-major, pixels ``(p, q, c)``.

    Raises:
        ConfigError: wrong rank, or a side that is not a multiple of ``patch_size``.
    """
    if images.ndim != 4:
        raise ConfigError(
            f"patchify: expected images (B, C, H, W), got shape {tuple(images.shape)}"
        )
    b, c, h, w = images.shape
    if patch_size <= 0 or h % patch_size or w % patch_size:
        raise ConfigError(
            f"patchify: image size {h}x{w} is not a multiple of patch_size={patch_size}; "
            "resize or crop the images to a multiple of the patch size"
        )
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)  # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, P, P, C)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)  # (B, N, P*P*C)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``(B, N, P·P·C)``.
        patch_size: side ``P`` of a patch.
        grid: ``(rows, cols)`` of the patch grid; ``None`` for a square grid.

    Returns:
        ``(B, C, rows·P, cols·P)``.

    Raises:
        ConfigError: the shapes do not fit the patch size or the grid.
    """
    if patches.ndim != 3:
        raise ConfigError(
            f"unpatchify: expected patches (B, N, P*P*C), got shape {tuple(patches.shape)}"
        )
    b, n, d = patches.shape
    if d % (patch_size * patch_size):
        raise ConfigError(
            f"unpatchify: patch dimension {d} is not a multiple of patch_size²={patch_size**2}"
        )
    c = d // (patch_size * patch_size)
    if grid is None:
        side = int(round(n**0.5))
        grid = (side, side)
    gh, gw = grid
    if gh * gw != n:
        raise ConfigError(
            f"unpatchify: {n} patches do not form a {gh}x{gw} grid; pass grid=(rows, cols)"
        )
    x = patches.reshape(b, gh, gw, patch_size, patch_size, c)  # (B, gh, gw, P, P, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, P, gw, P)
    return x.reshape(b, c, gh * patch_size, gw * patch_size)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch standardisation of MAE's ``norm_pix_loss``.

    ``(x - mean) / sqrt(var + eps)`` over the last dimension, with the *unbiased*
    variance exactly as in the MAE reference code.

    Args:
        patches: ``(..., D)``.
        eps: added to the variance.

    Returns:
        Tensor of the same shape.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, like MAE
    return (patches - mean) / (var + eps).sqrt()


def _as_patches(x: Tensor, patch_size: int | None, what: str) -> Tensor:
    if x.ndim == 3:
        return x
    if x.ndim == 4:
        if patch_size is None:
            raise ConfigError(
                f"mim_loss: {what} is an image batch {tuple(x.shape)}; pass patch_size= "
                "to patchify it, or pass patches (B, N, P*P*C)"
            )
        return patchify(x, patch_size)
    raise ConfigError(
        f"mim_loss: {what} must be patches (B, N, P*P*C) or images (B, C, H, W), "
        f"got shape {tuple(x.shape)}"
    )


def mim_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    norm_pix: bool = False,
    loss: Literal["l2", "l1"] = "l2",
    patch_size: int | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Reconstruction error averaged over the masked patches.

    Args:
        pred: predicted patches ``(B, N, P·P·C)``, or images ``(B, C, H, W)``.
        target: true patches ``(B, N, P·P·C)``, or images ``(B, C, H, W)`` (then
            ``patch_size`` is required).
        mask: ``(B, N)`` bool, True = masked (the patches that count); a 0/1 integer or
            float mask (MAE's convention) is accepted.
        norm_pix: standardise each target patch first (MAE's ``norm_pix_loss``).
        loss: ``"l2"`` (squared error, the paper's) or ``"l1"``.
        patch_size: patch side, needed when ``pred`` or ``target`` are images.
        eps: variance floor of ``norm_pix``.

    Returns:
        Scalar float32 tensor: ``Σ_{masked} mean_d err / #masked``.

    Raises:
        ConfigError: unknown ``loss``, mismatched shapes.
        DataError: the mask selects no patch (the mean would divide by zero).
    """
    if loss not in _LOSSES:
        raise ConfigError(f"mim_loss: unknown loss {loss!r}; choose one of {list(_LOSSES)}")
    pred = _as_patches(pred, patch_size, "pred")
    target = _as_patches(target, patch_size, "target")
    if pred.shape != target.shape:
        raise ConfigError(
            f"mim_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    mask = as_bool_mask(mask, "mim_loss")
    if mask.shape != pred.shape[:2]:
        raise ConfigError(
            f"mim_loss: mask shape {tuple(mask.shape)} must be (B, N) = {tuple(pred.shape[:2])}"
        )
    # float32 so a bf16 autocast region does not sum thousands of squares in bf16
    pred, target = pred.float(), target.float()
    if norm_pix:
        target = normalize_patches(target, eps)
    diff = pred - target
    per_patch = diff.square() if loss == "l2" else diff.abs()
    per_patch = per_patch.mean(dim=-1)  # (B, N)
    weights = mask.to(per_patch.dtype)
    count = weights.sum()
    if not bool(count > 0):
        raise DataError(
            "mim_loss: the mask selects no patch, so the masked mean is undefined; "
            "use a mask ratio > 0 (True marks a masked patch)"
        )
    # torch.where, not a multiplication by the mask: an overflowed (inf) error in an
    # unmasked patch would turn into 0·inf = NaN and poison the loss
    return torch.where(mask, per_patch, 0.0).sum() / count


class MIMLoss(nn.Module):
    """Masked image modelling loss (:func:`mim_loss` as a module).

    Args:
        patch_size: patch side, used when the inputs are images; None for patches.
        norm_pix: standardise each target patch (MAE's ``norm_pix_loss``).
        loss: ``"l2"`` (the paper's) or ``"l1"``.

    Raises:
        ConfigError: unknown ``loss`` or non-positive ``patch_size``.
    """

    def __init__(
        self,
        patch_size: int | None = None,
        norm_pix: bool = False,
        loss: Literal["l2", "l1"] = "l2",
    ) -> None:
        super().__init__()
        if loss not in _LOSSES:
            raise ConfigError(f"MIMLoss: unknown loss {loss!r}; choose one of {list(_LOSSES)}")
        if patch_size is not None and patch_size <= 0:
            raise ConfigError(f"MIMLoss: patch_size must be positive, got {patch_size}")
        self.patch_size = patch_size
        self.norm_pix = norm_pix
        self.loss = loss

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """See :func:`mim_loss`; shapes ``(B, N, P·P·C)`` or ``(B, C, H, W)``, mask ``(B, N)``."""
        return mim_loss(pred, target, mask, self.norm_pix, self.loss, self.patch_size)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, norm_pix={self.norm_pix}, loss={self.loss!r}"
