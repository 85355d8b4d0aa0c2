"""Contact sheets: a grid of synthetic samples, one labelled row per organ or class.

Pure functions returning a Pillow image; the command line (``arlkit data show``) saves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from arlkit.data.synthetic.dataset import SyntheticTask, sample_seed
from arlkit.data.synthetic.generate import render
from arlkit.data.synthetic.phantoms import get_phantom

__all__ = ["contact_sheet", "organ_sheet", "task_sheet"]

_GAP = 4
_LABEL_W = 150
_BACKGROUND = 24


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]], caption: str = ""
) -> Image.Image:
    """Lay out rows of equally sized grey images with a name on the left of each row.

    Args:
        rows: ``(name, images)``; images are ``(S, S)`` arrays in [0, 1].
        caption: optional line of text above the grid.

    Returns:
        An 8-bit greyscale image.
    """
    side = max(img.shape[0] for _, imgs in rows for img in imgs)
    cols = max(len(imgs) for _, imgs in rows)
    top = 24 if caption else 0
    width = _LABEL_W + cols * (side + _GAP) + _GAP
    height = top + len(rows) * (side + _GAP) + _GAP
    sheet = Image.new("L", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    if caption:
        draw.text((_GAP + 2, 4), caption, fill=230, font=font)
    for r, (name, imgs) in enumerate(rows):
        y = top + _GAP + r * (side + _GAP)
        draw.text((_GAP + 2, y + side // 2 - 8), name, fill=230, font=font)
        for k, img in enumerate(imgs):
            tile = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
            sheet.paste(tile, (_LABEL_W + _GAP + k * (side + _GAP), y))
    return sheet


def organ_sheet(
    organs: Sequence[str], per_row: int = 6, size: int = 160, seed: int = 0
) -> Image.Image:
    """``per_row`` samples of each organ, cycling through its variants and probes.

    Raises:
        ConfigError: an organ without a phantom family.
    """
    rows = []
    for k, organ in enumerate(organs):
        family = get_phantom(organ)
        variants = list(family.variants)
        imgs = []
        for j in range(per_row):
            img = render(
                organ,
                sample_seed(seed, 3, k, j),
                size,
                probe=family.probes[j % len(family.probes)],
                variant=variants[j % len(variants)],
            )
            imgs.append(img.image)
        rows.append((organ, imgs))
    return contact_sheet(rows, f"arlkit synthetic corpus, {size}x{size}, seed {seed}")


def task_sheet(task: str, per_row: int = 6, size: int = 160, seed: int = 0) -> Image.Image:
    """``per_row`` samples of each class of a task (the LV mask outlined for ``cardiac_seg``)."""
    data = SyntheticTask(task, per_row * 8, split="val", size=size, seed=seed)
    rows = []
    for g in range(len(data.spec.variants)):
        name = data.classes[g] if not data.spec.segmentation else "lv mask"
        picks = [i for i in range(len(data)) if data.groups[i] == g][:per_row]
        imgs = []
        for i in picks:
            img = data.render(i)
            pic = img.image.copy()
            if img.labels is not None:  # outline: mask pixels with a background neighbour
                m = img.labels > 0
                inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
                edge = m.copy()
                edge[1:-1, 1:-1] &= ~inner
                pic[edge] = 1.0
            imgs.append(pic)
        rows.append((name, imgs))
    caption = f"synthetic task {task!r} ({', '.join(data.classes)}), {size}x{size}, seed {seed}"
    return contact_sheet(rows, caption)
