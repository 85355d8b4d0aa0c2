"""Training views: multi-crop inside the field of view, with ultrasound augmentation.

:class:`MultiCropViews` (registered as ``multicrop``) turns a sample into ``n_global``
global and ``n_local`` local crops (DINO's multi-crop), each a random-resized crop whose
area is a fraction of the *field of view's* bounding box and which must lie mostly
inside the field of view (``min_fov_fraction``), so crops show tissue, not the black
background. ``single`` is the one-view variant for MIM-only recipes and MAE.

Augmentations model what changes between ultrasound acquisitions, on the
log-compressed display values ``x ∈ [0, 1]``:

- *gain*: an offset ``x + b`` (receiver gain in dB is additive after log compression);
- *contrast*: ``(x − m)·c + m`` around the view's mean (dynamic-range setting);
- *gamma*: ``x^γ`` (display map);
- *depth attenuation*: ``x + β·(d − ½)`` with ``d`` the depth in the field of view —
  tissue attenuation is exponential in depth, hence linear after log compression, and
  time-gain compensation differs between operators;
- *horizontal flip* where valid: only when the field of view is left-right symmetric
  and the organ has no orientation convention (``no_flip_organs``; by default the
  cardiac views, whose left/right layout is part of the view).

No colour jitter (B-mode is grey) and no blur by default (``blur_prob``): blur destroys
the speckle the model should learn from. Intensity changes apply inside the field of
view only; outside it the crop keeps its pixels (the black background stays black).

Where this departs from DINO's ``DataAugmentationDINO`` on purpose: no solarisation of
the second global view (an inverted B-mode image is not an acquisition), one
``blur_prob`` for every view instead of DINO's 1.0 / 0.1 / 0.5, and crops resized bilinearly
(antialiased when shrinking) rather than bicubically. Crop sampling and its fallback
follow torchvision's ``RandomResizedCrop``, with the area measured in the field of view's
bounding box and one more test: a try must cover the field of view enough
(``min_fov_fraction``), else the best-covered try is kept before the fallback.

Determinism: ``views(sample, generator=g)`` draws everything from ``g`` (a
``torch.Generator``): the same generator state gives the same views. See
:class:`arlkit.data.dataset.ViewDataset` for per-(seed, epoch, index) generators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["MultiCropViews", "single_view"]


class MultiCropViews:
    """Global and local crops of a sample, restricted to its field of view.

    Args:
        global_size: side of the global views ``Sg``.
        local_size: side of the local views ``Sl``.
        n_global: number of global views.
        n_local: number of local views (0 for none).
        global_scale: crop area range, as a fraction of the field of view's bounding box.
        local_scale: same for the local views.
        ratio: aspect-ratio range (width / height) of the crops.
        min_fov_fraction: a crop must have at least this fraction inside the field of view
            (the best of 10 tries is kept otherwise).
        gain: brightness offsets are drawn from ``U(−gain, gain)``.
        contrast: contrast factors from ``U(1 − contrast, 1 + contrast)``.
        gamma: ``γ`` log-uniform in ``[1/(1 + gamma), 1 + gamma]``.
        attenuation: depth-ramp slopes from ``U(−attenuation, attenuation)``.
        p_intensity: probability of each intensity change (gain, contrast, gamma, ramp).
        flip: allow horizontal flips (probability 0.5 where valid).
        no_flip_organs: organs never flipped; ``None`` = ``["cardiac"]`` if the taxonomy has it.
        blur_prob: probability of a Gaussian blur (off by default: it erases speckle).
        blur_sigma: blur standard-deviation range in pixels of the view.
        clean_global: also return ``global_clean``: the global crops before the intensity
            augmentation and blur (same geometry and flips), for MIM objectives that
            reconstruct the un-augmented image (``mim`` with ``target: clean``).
        taxonomy: resolves ``no_flip_organs`` (default taxonomy when not given).

    Raises:
        ConfigError: invalid sizes, counts, ranges or organ names.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_fov_fraction: float = 0.5,
        gain: float = 0.1,
        contrast: float = 0.3,
        gamma: float = 0.3,
        attenuation: float = 0.2,
        p_intensity: float = 0.8,
        flip: bool = True,
        no_flip_organs: list[str] | None = None,
        blur_prob: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        clean_global: bool = False,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        if global_size <= 0 or local_size <= 0:
            raise ConfigError(f"views: sizes must be positive, got {global_size}, {local_size}")
        if n_global < 1 or n_local < 0:
            raise ConfigError(f"views: need n_global ≥ 1 and n_local ≥ 0, got {n_global}, {n_local}")
        for name, rng in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < rng[0] <= rng[1] <= 1.0:
                raise ConfigError(f"views: {name} must satisfy 0 < min ≤ max ≤ 1, got {tuple(rng)}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"views: ratio must satisfy 0 < min ≤ max, got {tuple(ratio)}")
        for name, p in (("p_intensity", p_intensity), ("blur_prob", blur_prob),
                        ("min_fov_fraction", min_fov_fraction)):  # fmt: skip
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"views: {name} must be in [0, 1], got {p}")
        if min(gain, contrast, gamma, attenuation) < 0 or contrast >= 1:
            raise ConfigError("views: gain, gamma and attenuation must be ≥ 0, contrast in [0, 1)")
        self.global_size, self.local_size = int(global_size), int(local_size)
        self.n_global, self.n_local = int(n_global), int(n_local)
        self.global_scale, self.local_scale = _as_pair(global_scale), _as_pair(local_scale)
        self.ratio = _as_pair(ratio)
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        self.min_fov_fraction = float(min_fov_fraction)
        self.gain, self.contrast, self.attenuation = float(gain), float(contrast), float(attenuation)
        self.log_gamma = math.log1p(float(gamma))
        self.p_intensity, self.flip = float(p_intensity), bool(flip)
        self.blur_prob, self.blur_sigma = float(blur_prob), _as_pair(blur_sigma)
        self.clean_global = bool(clean_global)
        taxonomy = taxonomy or Taxonomy()
        if no_flip_organs is None:
            no_flip_organs = ["cardiac"] if "cardiac" in taxonomy.organs else []
        self.no_flip = frozenset(taxonomy.index(o, where="views: no_flip_organs")
                                 for o in no_flip_organs)  # fmt: skip

    def __repr__(self) -> str:
        return (f"MultiCropViews({self.n_global}×{self.global_size}, "
                f"{self.n_local}×{self.local_size})")  # fmt: skip

    def __call__(
        self, sample: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Add ``global`` ``(n_global, 1, Sg, Sg)``, ``local`` ``(n_local, 1, Sl, Sl)`` and their
        field-of-view masks ``global_fov``/``local_fov`` (bool, same shapes) to ``sample``,
        and with ``clean_global`` the un-augmented global crops ``global_clean``.

        Args:
            sample: with ``image`` ``(1, H, W)`` in [0, 1], optional ``fov`` ``(1, H, W)``
                bool and ``organ``.
            generator: source of randomness; ``None`` uses torch's global generator.
        """
        image = sample["image"]
        fov = sample.get("fov")
        fov = torch.ones_like(image, dtype=torch.bool) if fov is None else fov
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        stack = torch.cat([image.float(), fov.float()])  # (2, H, W): crop both at once
        box = _bbox(fov[0])
        integral = F.pad(fov[0].float().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H+1, W+1)
        flippable = self.flip and int(sample.get("organ", -1)) not in self.no_flip
        flippable = flippable and _symmetric(fov[0])
        out = dict(sample)
        for name, n, size, scale in (
            ("global", self.n_global, self.global_size, self.global_scale),
            ("local", self.n_local, self.local_size, self.local_scale),
        ):
            views, masks, plain = self._views(stack, box, integral, n, size, scale, flippable, rng)
            out[name], out[f"{name}_fov"] = views, masks
            if self.clean_global and name == "global":
                out["global_clean"] = plain
        return out

    def _views(
        self, stack: torch.Tensor, box: tuple[int, int, int, int], integral: torch.Tensor,
        n: int, size: int, scale: tuple[float, float], flippable: bool, rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Augmented views, their FOV masks and the same crops before intensity augmentation."""
        if n == 0:
            empty = torch.zeros(0, 1, size, size)
            return empty, empty.bool(), empty
        crops, depths = [], []
        fy0, fy1 = box[0], max(box[2], box[0] + 1)
        for _ in range(n):
            top, left, h, w = self._crop_box(box, integral, scale, rng)
            crop = stack[None, :, top : top + h, left : left + w]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear",
                                       align_corners=False, antialias=h > size or w > size))
            rows = top + (torch.arange(size) + 0.5) * (h / size)
            depths.append((rows - fy0) / (fy1 - fy0))  # (size,) depth in the FOV, 0..1
        both = torch.cat(crops)  # (n, 2, S, S)
        plain, masks = both[:, :1].clamp(0.0, 1.0), both[:, 1:] > 0.5
        augmented = self._intensity(plain, masks, torch.stack(depths)[:, None, :, None], rng)
        # Only the field of view is augmented; outside it the pixels stay as they were
        # (background stays black, and a too-small detected FOV never erases tissue).
        views = torch.where(masks, augmented, plain)
        if flippable:
            flip = torch.from_numpy(rng.random(n) < 0.5)
            views[flip], masks[flip] = views[flip].flip(-1), masks[flip].flip(-1)
            plain[flip] = plain[flip].flip(-1)
        if self.blur_prob > 0:
            for k in np.flatnonzero(rng.random(n) < self.blur_prob).tolist():
                views[k] = _gaussian_blur(views[k], float(rng.uniform(*self.blur_sigma)))
        return views, masks, plain

    def _crop_box(
        self, box: tuple[int, int, int, int], integral: torch.Tensor,
        scale: tuple[float, float], rng: np.random.Generator,
    ) -> tuple[int, int, int, int]:  # fmt: skip
        y0, x0, y1, x1 = box
        bh, bw = y1 - y0, x1 - x0
        best, best_cover = None, -1.0
        for _ in range(10):
            area = bh * bw * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < w <= bw and 0 < h <= bh):
                continue
            top, left = y0 + int(rng.integers(0, bh - h + 1)), x0 + int(rng.integers(0, bw - w + 1))
            inside = (integral[top + h, left + w] - integral[top, left + w]
                      - integral[top + h, left] + integral[top, left])  # fmt: skip
            cover = float(inside) / (h * w)
            if cover >= self.min_fov_fraction:
                return top, left, h, w
            if cover > best_cover:
                best, best_cover = (top, left, h, w), cover
        if best is not None:
            return best
        # as torchvision's RandomResizedCrop: a centred crop of the whole box, its aspect
        # ratio clamped to the allowed range
        lo, hi = self.ratio
        h, w = bh, bw
        if bw / bh < lo:
            h = round(bw / lo)
        elif bw / bh > hi:
            w = round(bh * hi)
        return y0 + (bh - h) // 2, x0 + (bw - w) // 2, h, w

    def _intensity(
        self, x: torch.Tensor, fov: torch.Tensor, depth: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        """Gamma, contrast, gain and depth ramp with per-view parameters; ``x`` ``(n,1,S,S)``."""
        n = x.shape[0]

        def draw(low: float, high: float, neutral: float) -> torch.Tensor:
            values = np.where(rng.random(n) < self.p_intensity, rng.uniform(low, high, n), neutral)
            return torch.from_numpy(values.astype(np.float32)).view(n, 1, 1, 1)

        gamma = draw(-self.log_gamma, self.log_gamma, 0.0).exp()
        contrast = draw(1.0 - self.contrast, 1.0 + self.contrast, 1.0)
        gain = draw(-self.gain, self.gain, 0.0)
        slope = draw(-self.attenuation, self.attenuation, 0.0)
        x = x.clamp_min(1e-6).pow(gamma)
        inside = fov.float()
        mean = (x * inside).sum((2, 3), keepdim=True) / inside.sum((2, 3), keepdim=True).clamp_min(1)
        x = (x - mean) * contrast + mean + gain + slope * (depth - 0.5)
        return x.clamp_(0.0, 1.0)


def single_view(
    size: int = 224,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    min_fov_fraction: float = 0.5,
    gain: float = 0.1,
    contrast: float = 0.3,
    gamma: float = 0.3,
    attenuation: float = 0.2,
    p_intensity: float = 0.8,
    flip: bool = True,
    no_flip_organs: list[str] | None = None,
    clean_global: bool = False,
    taxonomy: Taxonomy | None = None,
) -> MultiCropViews:
    """One global view and no local crops (MIM-only recipes, MAE); see :class:`MultiCropViews`."""
    return MultiCropViews(
        global_size=size, n_global=1, n_local=0, global_scale=scale, ratio=ratio,
        min_fov_fraction=min_fov_fraction, gain=gain, contrast=contrast, gamma=gamma,
        attenuation=attenuation, p_intensity=p_intensity, flip=flip,
        no_flip_organs=no_flip_organs, clean_global=clean_global, taxonomy=taxonomy,
    )  # fmt: skip


def _bbox(fov: torch.Tensor) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of a ``(H, W)`` mask; the whole image if empty."""
    rows, cols = fov.any(1), fov.any(0)
    if not bool(rows.any()):
        return 0, 0, fov.shape[0], fov.shape[1]
    r, c = torch.nonzero(rows)[:, 0], torch.nonzero(cols)[:, 0]
    return int(r[0]), int(c[0]), int(r[-1]) + 1, int(c[-1]) + 1


def _symmetric(fov: torch.Tensor, min_iou: float = 0.9) -> bool:
    """Whether a ``(H, W)`` mask is nearly left-right symmetric (IoU with its mirror)."""
    mirror = fov.flip(-1)
    union = int((fov | mirror).sum())
    return union == 0 or int((fov & mirror).sum()) / union >= min_iou


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, S, S)``, reflect padding."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y[0]


def _as_pair(value: Sequence[float]) -> tuple[float, float]:
    return float(value[0]), float(value[1])
