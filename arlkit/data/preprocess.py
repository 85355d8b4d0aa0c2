"""Preprocessing: crop to the field of view, letterbox, and the field-of-view mask.

:func:`preprocess` finds the scan region (:func:`arlkit.data.fov.find_fov`), crops to
its bounding box (optional), resizes keeping the aspect ratio (antialiased), pads to
the output size, and rasterises the region's convex hull on the output canvas as the
field-of-view mask. :func:`warp_mask` applies the same geometry to a label mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from arlkit.data.fov import FieldOfView, find_fov
from arlkit.errors import ConfigError

__all__ = ["FieldOfView", "Geometry", "Preprocessed", "find_fov", "preprocess", "warp_mask"]


@dataclass(frozen=True)
class Geometry:
    """How source pixels land on the output canvas.

    Attributes:
        box: source crop ``(top, left, bottom, right)``.
        scaled: ``(h, w)`` of the crop after resizing.
        pad: ``(top, left)`` of the resized crop on the canvas.
        size: canvas ``(H, W)``.
    """

    box: tuple[int, int, int, int]
    scaled: tuple[int, int]
    pad: tuple[int, int]
    size: tuple[int, int]

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """Source ``(P, 2)`` edge coordinates ``(x, y)`` → canvas edge coordinates."""
        top, left, bottom, right = self.box
        sx = self.scaled[1] / max(right - left, 1)
        sy = self.scaled[0] / max(bottom - top, 1)
        out = np.empty_like(xy, dtype=np.float64)
        out[:, 0] = (xy[:, 0] - left) * sx + self.pad[1]
        out[:, 1] = (xy[:, 1] - top) * sy + self.pad[0]
        return out


@dataclass(frozen=True)
class Preprocessed:
    """Output of :func:`preprocess`.

    Attributes:
        image: ``(1, H, W)`` float32 in [0, 1]; zero in the padding.
        fov: ``(1, H, W)`` bool field-of-view mask (False in the padding).
        geometry: the crop/resize/pad mapping (apply it to masks with :func:`warp_mask`).
        fov_found: whether a scan region was detected (else the whole image counts).
    """

    image: torch.Tensor
    fov: torch.Tensor
    geometry: Geometry
    fov_found: bool


def preprocess(
    img: np.ndarray,
    size: int | tuple[int, int] = 224,
    *,
    crop_fov: bool = True,
    detect_fov: bool = True,
    threshold: float = 0.02,
) -> Preprocessed:
    """Crop to the scan region, resize keeping the aspect ratio, pad, and mask the FOV.

    Args:
        img: ``(H, W)`` float32 luminance in [0, 1] (any size, e.g. 64×64 to 1280×960).
        size: output ``S`` (square) or ``(H_out, W_out)``.
        crop_fov: crop to the bounding box of the detected region before resizing.
        detect_fov: find the region; if False the whole image is the field of view.
        threshold: signal threshold of :func:`find_fov`.

    Returns:
        :class:`Preprocessed` with ``image`` and ``fov`` of shape ``(1, H_out, W_out)``.

    Raises:
        ConfigError: a non-positive output size.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if out_h <= 0 or out_w <= 0:
        raise ConfigError(f"preprocess: output size must be positive, got {size}")
    if img.ndim != 2:
        raise ValueError(f"preprocess expects an (H, W) image, got shape {img.shape}")
    h, w = img.shape
    fov = find_fov(img, threshold) if detect_fov else None
    box = fov.box if (fov is not None and fov.found and crop_fov) else (0, 0, h, w)
    geom = _letterbox(box, (out_h, out_w))
    top, left, bottom, right = box
    crop = torch.from_numpy(np.ascontiguousarray(img[top:bottom, left:right], dtype=np.float32))
    nh, nw = geom.scaled
    if (nh, nw) != crop.shape:
        down = nh < crop.shape[0] or nw < crop.shape[1]
        crop = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear",
                             align_corners=False, antialias=down)[0, 0]  # (nh, nw)
    image = torch.zeros(out_h, out_w)
    pt, pl = geom.pad
    image[pt : pt + nh, pl : pl + nw] = crop.clamp_(0.0, 1.0)
    if fov is not None and fov.found:
        mask = _rasterize(geom.to_canvas(fov.polygon), (out_h, out_w))
        mask[:pt], mask[pt + nh :], mask[:, :pl], mask[:, pl + nw :] = False, False, False, False
    else:
        mask = torch.zeros(out_h, out_w, dtype=torch.bool)
        mask[pt : pt + nh, pl : pl + nw] = True
    return Preprocessed(image[None], mask[None], geom, bool(fov is not None and fov.found))


def warp_mask(mask: np.ndarray, geometry: Geometry, fill: int = 0) -> torch.Tensor:
    """Apply an image's crop/resize/pad to its label mask (nearest neighbour).

    Args:
        mask: ``(H, W)`` integer labels, the source image's size.
        geometry: from :func:`preprocess` of that image.
        fill: label of the padding.

    Returns:
        ``(H_out, W_out)`` int64.
    """
    top, left, bottom, right = geometry.box
    crop = torch.from_numpy(np.ascontiguousarray(mask[top:bottom, left:right]).astype(np.int64))
    nh, nw = geometry.scaled
    resized = F.interpolate(crop[None, None].float(), size=(nh, nw), mode="nearest-exact")
    out = torch.full(geometry.size, fill, dtype=torch.int64)
    pt, pl = geometry.pad
    out[pt : pt + nh, pl : pl + nw] = resized[0, 0].round().long()
    return out


def _letterbox(box: tuple[int, int, int, int], size: tuple[int, int]) -> Geometry:
    top, left, bottom, right = box
    ch, cw = max(bottom - top, 1), max(right - left, 1)
    scale = min(size[0] / ch, size[1] / cw)
    nh = min(size[0], max(1, round(ch * scale)))
    nw = min(size[1], max(1, round(cw * scale)))
    return Geometry(box, (nh, nw), ((size[0] - nh) // 2, (size[1] - nw) // 2), size)


def _rasterize(polygon: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Pixels whose centre lies in the polygon (given in edge coordinates)."""
    canvas = Image.new("L", (size[1], size[0]), 0)
    # PIL puts pixel centres at integer coordinates: shift edge coordinates by half a pixel.
    ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in polygon], fill=1)
    return torch.from_numpy(np.asarray(canvas, dtype=np.bool_).copy())
