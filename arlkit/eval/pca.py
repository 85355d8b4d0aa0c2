"""PCA of patch features shown as colour over the images (the paper's Figure-1 view).

For each backbone, the patch tokens of the shown images that lie inside the field of view
(the scan's fan or rectangle, ``fov``) are pooled and centred, and their first three
principal components become the red, green and blue channels (each scaled to [0, 1]
between its 1st and 99th percentile over those patches). As in DINOv2's Figure 1 the
background is removed before the PCA, so the colours show structure inside the scan
rather than "scan vs black background"; DINOv2 finds its foreground by thresholding a
first PCA, ultrasound brings its field of view with every sample. Parts of the images
that the backbone represents alike get the same colour, so one sees whether a backbone
separates anatomy (chambers, nodules, layers) or only intensity. Colours are comparable
within a column, not across backbones.

Inside: a patch is foreground when *more than half* of its pixels are in the field of
view (:func:`fov_patches`); a patch cut exactly in half is background. Background patches
get no colour (black in :func:`patch_pca_rgb`); in the figure they show the grey image,
and every pixel outside the field of view is black, so the fan's edge is drawn at pixel
resolution rather than as a staircase of patches. An image with no foreground patch (no
field of view found, or one smaller than half a patch) falls back to all its patches and
no black-out, and a note says so. ``foreground="all"`` fits on every patch (the view
before field-of-view masking: it shows what the backbone makes of the background too).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.data.condition import batch_condition, condition_keys
from arlkit.errors import ConfigError
from arlkit.eval.features import eval_mode

__all__ = ["FOREGROUND_MODES", "fov_patches", "patch_pca_rgb", "pca_figure", "pca_panels"]

#: What the PCA is fitted on: patches inside the field of view, or every patch.
FOREGROUND_MODES: tuple[str, ...] = ("fov", "all")


def _fix_signs(components: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """Flip each component so its largest-magnitude projection is positive (deterministic)."""
    idx = projected.abs().argmax(0)  # (3,)
    signs = torch.sign(projected[idx, torch.arange(projected.shape[1])])
    signs[signs == 0] = 1
    return projected * signs


def fov_patches(fov: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches that lie mostly inside the field of view.

    Args:
        fov: ``(B, 1, H, W)`` bool field of view; ``H`` and ``W`` multiples of ``patch``.
        patch: side of a patch in pixels.

    Returns:
        ``(B, H/patch, W/patch)`` bool: True where more than half of the patch's pixels
        are inside (exactly half is outside).
    """
    inside = F.avg_pool2d(fov.float(), patch)  # (B, 1, h, w): fraction of pixels inside
    return inside[:, 0] > 0.5


def patch_pca_rgb(
    tokens: torch.Tensor, grid: tuple[int, int], foreground: torch.Tensor | None = None
) -> torch.Tensor:
    """First three principal components of patch tokens as RGB.

    Args:
        tokens: ``(B, N, C)`` patch tokens (no prefix tokens), ``N = grid[0]·grid[1]``.
        grid: patch grid ``(h, w)``.
        foreground: ``(B, h, w)`` bool, the patches the PCA is fitted on and the
            percentiles are taken over (None: all patches).

    Returns:
        ``(B, 3, h, w)`` in [0, 1]; 0 (black) at the patches outside ``foreground``.

    Raises:
        ConfigError: ``N`` does not match the grid; ``foreground`` has another shape or
            marks no patch.
    """
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ConfigError(f"pca: {n} tokens do not fill a {grid[0]}×{grid[1]} grid")
    if foreground is None:
        keep = torch.ones(b * n, dtype=torch.bool, device=tokens.device)
    elif tuple(foreground.shape) != (b, *grid) or foreground.dtype != torch.bool:
        raise ConfigError(f"pca: foreground must be a ({b}, {grid[0]}, {grid[1]}) bool mask of "
                          f"patches, got {tuple(foreground.shape)} {foreground.dtype}")
    else:
        keep = foreground.reshape(b * n).to(tokens.device)  # (B·N,)
        if not keep.any():
            raise ConfigError("pca: the foreground mask marks no patch; nothing to fit the PCA on")
    fit = tokens.reshape(b * n, c).double()[keep]  # (F, C)
    fit = fit - fit.mean(0, keepdim=True)
    k = min(3, c, fit.shape[0])
    # full SVD is exact and deterministic; F × C stays small for a figure
    _, _, vh = torch.linalg.svd(fit, full_matrices=False)
    proj = _fix_signs(vh[:k], fit @ vh[:k].T)  # (F, k)
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], 1)
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    rgb = proj.new_zeros(b * n, 3)  # background stays black
    rgb[keep] = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return rgb.reshape(b, grid[0], grid[1], 3).permute(0, 3, 1, 2).float()  # (B, 3, h, w)


@torch.no_grad()
def _backbone_rgb(
    model: nn.Module, images: torch.Tensor, organs: Any, fov: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """PCA colours of one backbone: ``(B, 3, H, W)``, the ``(B, 1, H, W)`` pixels of the
    patches fitted on, and the rows that fell back to all patches (no patch inside ``fov``)."""
    p = int(model.patch_size)
    b, _, h, w = images.shape
    if h % p or w % p:
        raise ConfigError(f"pca: image size {h}×{w} is not a multiple of the patch size {p}")
    if fov is None:
        fg = torch.ones(b, h // p, w // p, dtype=torch.bool)
        fallback: list[int] = []
    else:
        fg = fov_patches(fov, p)  # (B, h, w)
        empty = ~fg.flatten(1).any(1)
        fallback = empty.nonzero().flatten().tolist()
        fg[empty] = True
    with eval_mode(model):
        tokens = model.forward_features(images, organs)  # (B, prefix+N, C)
    tokens = tokens[:, int(model.num_prefix_tokens):]
    rgb = patch_pca_rgb(tokens, (h // p, w // p), fg.to(tokens.device)).cpu()
    up = F.interpolate(torch.cat([rgb, fg[:, None].float()], 1), size=(h, w), mode="nearest")
    return up[:, :3], up[:, 3:] > 0.5, fallback  # (B, 3, H, W), (B, 1, H, W)


def pca_panels(
    images: torch.Tensor,
    backbones: Sequence[tuple[str, nn.Module]],
    organs: torch.Tensor | None = None,
    fov: torch.Tensor | None = None,
    alpha: float = 0.6,
    side: Mapping[str, torch.Tensor] | None = None,
    foreground: str = "fov",
    titles: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """The columns of :func:`pca_figure`: the input, then one overlay per backbone.

    Args: as :func:`pca_figure`.

    Returns:
        ``[(name, (B, H, W, 3) float array in [0, 1])]``, the input first.

    Raises:
        ConfigError: bad shapes, options or backbones.
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ConfigError(f"pca: expected images (B, 1, H, W), got {tuple(images.shape)}")
    if not backbones:
        raise ConfigError("pca: give at least one backbone")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"pca: alpha must be in [0, 1], got {alpha:g}")
    if foreground not in FOREGROUND_MODES:
        raise ConfigError(f"pca: foreground must be one of {', '.join(FOREGROUND_MODES)}, "
                          f"got {foreground!r}")
    if fov is not None and fov.shape != images.shape:
        raise ConfigError(f"pca: fov must be a mask shaped like the images "
                          f"{tuple(images.shape)}, got {tuple(fov.shape)}")
    if fov is not None:
        fov = fov != 0  # a bool mask, or 0/1 numbers
    say = log or (lambda line: warnings.warn(line, stacklevel=3))
    if foreground == "fov" and fov is None:
        say("pca: no field-of-view masks given; the PCA is fitted on all patches")
    said: set[str] = set()
    gray = images.expand(-1, 3, -1, -1)
    panels: list[tuple[str, np.ndarray]] = [("input", gray.permute(0, 2, 3, 1).numpy())]
    for name, model in backbones:
        keys = condition_keys(model) if organs is not None else ()
        condition = batch_condition({"organ": organs, **(side or {})}, keys) if keys else organs
        rgb, fitted, fallback = _backbone_rgb(
            model, images, condition, fov if foreground == "fov" else None)
        weight = alpha * fitted.float()  # patches outside the fit keep the grey image
        mix = (1 - weight) * gray + weight * rgb
        if fov is not None:
            shown = fov.clone()
            shown[fallback] = True  # a fallback image is treated as having no field of view
            mix = mix * shown.float()
        for r in fallback:
            title = f" ({titles[r]})" if titles is not None and titles[r] else ""
            p = int(model.patch_size)
            note = (f"pca: row {r + 1}{title}: no {p}×{p} patch "
                    "lies mostly inside the field of view; its PCA uses all its patches")
            if note not in said:
                said.add(note)
                say(note)
        panels.append((name, mix.clamp(0, 1).permute(0, 2, 3, 1).numpy()))
    return panels


def pca_figure(
    images: torch.Tensor,
    backbones: Sequence[tuple[str, nn.Module]],
    path: str,
    organs: torch.Tensor | None = None,
    fov: torch.Tensor | None = None,
    alpha: float = 0.6,
    titles: Sequence[str] | None = None,
    side: Mapping[str, torch.Tensor] | None = None,
    foreground: str = "fov",
    log: Callable[[str], None] | None = None,
) -> str:
    """Save a grid: each row an image, first column the input, then one overlay per backbone.

    Args:
        images: ``(B, 1, H, W)`` in [0, 1].
        backbones: ``(name, model)`` pairs following the backbone contract.
        path: PNG to write.
        organs: ``(B,)`` organ indices passed to the backbones (None: unknown).
        fov: ``(B, 1, H, W)`` field of view, bool or 0/1 (the samples' ``"fov"``); outside it the
            overlay is black.
        alpha: weight of the PCA colours over the grey image.
        titles: a label per row (e.g. the organ or class).
        side: per-image side information (``probe``, ``depth_cm``; a batch of
            :func:`arlkit.eval.features.collate_samples`): each backbone also gets the keys
            its conditioners read (``condition_keys``), with ``organs``.
        foreground: ``"fov"``: fit the PCA on the patches inside ``fov`` (see the module
            docstring); ``"all"``: on every patch.
        log: receives a note per image that falls back to all its patches (and when
            ``foreground="fov"`` comes without ``fov``); default: ``warnings.warn``.

    Returns:
        ``path``.

    Raises:
        ConfigError: bad shapes, options or backbones.
    """
    from arlkit.eval.compare import pyplot

    panels = pca_panels(images, backbones, organs, fov, alpha, side, foreground, titles, log)
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
