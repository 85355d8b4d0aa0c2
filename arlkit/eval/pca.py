"""PCA of patch features shown as colour over the images (the paper's Figure-1 view).

For each backbone, the patch tokens of all shown images are pooled and centred, and their
first three principal components become the red, green and blue channels (each scaled
to [0, 1] between its 1st and 99th percentile over all patches). Parts of the images that
the backbone represents alike get the same colour, so one sees whether a backbone
separates anatomy (chambers, nodules, layers) or only intensity. Colours are comparable
within a column, not across backbones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.data.condition import batch_condition, condition_keys
from arlkit.errors import ConfigError

__all__ = ["patch_pca_rgb", "pca_figure"]


def _fix_signs(components: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """Flip each component so its largest-magnitude projection is positive (deterministic)."""
    idx = projected.abs().argmax(0)  # (3,)
    signs = torch.sign(projected[idx, torch.arange(projected.shape[1])])
    signs[signs == 0] = 1
    return projected * signs


def patch_pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """First three principal components of patch tokens as RGB.

    Args:
        tokens: ``(B, N, C)`` patch tokens (no prefix tokens), ``N = grid[0]·grid[1]``.
        grid: patch grid ``(h, w)``.

    Returns:
        ``(B, 3, h, w)`` in [0, 1].

    Raises:
        ConfigError: ``N`` does not match the grid.
    """
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ConfigError(f"pca: {n} tokens do not fill a {grid[0]}×{grid[1]} grid")
    flat = tokens.reshape(b * n, c).double()  # (B·N, C)
    flat = flat - flat.mean(0, keepdim=True)
    k = min(3, c, flat.shape[0])
    # full SVD is exact and deterministic; B·N × C stays small for a figure
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    proj = _fix_signs(vh[:k], flat @ vh[:k].T)  # (B·N, k)
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], 1)
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return rgb.reshape(b, grid[0], grid[1], 3).permute(0, 3, 1, 2).float()  # (B, 3, h, w)


@torch.no_grad()
def _backbone_rgb(model: nn.Module, images: torch.Tensor, organs: Any) -> torch.Tensor:
    p = int(model.patch_size)
    h, w = images.shape[-2:]
    if h % p or w % p:
        raise ConfigError(f"pca: image size {h}×{w} is not a multiple of the patch size {p}")
    model.eval()
    tokens = model.forward_features(images, organs)  # (B, prefix+N, C)
    tokens = tokens[:, int(model.num_prefix_tokens):]
    rgb = patch_pca_rgb(tokens, (h // p, w // p))
    return F.interpolate(rgb, size=(h, w), mode="nearest")  # (B, 3, H, W)


def pca_figure(
    images: torch.Tensor,
    backbones: Sequence[tuple[str, nn.Module]],
    path: str,
    organs: torch.Tensor | None = None,
    fov: torch.Tensor | None = None,
    alpha: float = 0.6,
    titles: Sequence[str] | None = None,
    side: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Save a grid: each row an image, first column the input, then one overlay per backbone.

    Args:
        images: ``(B, 1, H, W)`` in [0, 1].
        backbones: ``(name, model)`` pairs following the backbone contract.
        path: PNG to write.
        organs: ``(B,)`` organ indices passed to the backbones (None: unknown).
        fov: ``(B, 1, H, W)`` bool field of view; outside it the overlay is black.
        alpha: weight of the PCA colours over the grey image.
        titles: a label per row (e.g. the organ or class).
        side: per-image side information (``probe``, ``depth_cm``; a batch of
            :func:`arlkit.eval.features.collate_samples`): each backbone also gets the keys
            its conditioners read (``condition_keys``), with ``organs``.

    Returns:
        ``path``.
    """
    from arlkit.eval.compare import pyplot

    if images.dim() != 4 or images.shape[1] != 1:
        raise ConfigError(f"pca: expected images (B, 1, H, W), got {tuple(images.shape)}")
    if not backbones:
        raise ConfigError("pca: give at least one backbone")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"pca: alpha must be in [0, 1], got {alpha:g}")
    gray = images.expand(-1, 3, -1, -1)
    panels: list[tuple[str, np.ndarray]] = [("input", gray.permute(0, 2, 3, 1).numpy())]
    for name, model in backbones:
        keys = condition_keys(model) if organs is not None else ()
        condition = batch_condition({"organ": organs, **(side or {})}, keys) if keys else organs
        rgb = _backbone_rgb(model, images, condition)
        mix = (1 - alpha) * gray + alpha * rgb
        if fov is not None:
            mix = mix * fov.float()
        panels.append((name, mix.clamp(0, 1).permute(0, 2, 3, 1).numpy()))
    plt = pyplot()
    rows, cols = images.shape[0], len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, arr) in enumerate(panels):
            ax: Any = axes[r][c]
            ax.imshow(arr[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and titles is not None:
                ax.set_ylabel(titles[r], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
