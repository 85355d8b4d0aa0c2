"""Patch masks for masked image modelling: random (MAE) and block-wise (BEiT).

Every row of a mask masks exactly ``round(mask_ratio · N)`` patches, so that an
encoder that drops masked tokens (MAE's sparse encoder) gets rectangular batches.
Masks are reproducible from a ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from arlkit.errors import ConfigError, DataError

__all__ = ["MaskGenerator", "as_bool_mask"]

_MODES = ("random", "block")


def as_bool_mask(mask: Tensor, where: str) -> Tensor:
    """A patch mask as bool, True = masked: a bool mask as it is, an integer or float mask
    of 0s and 1s (MAE's convention, 1 = masked) converted.

    Raises:
        DataError: a mask with values other than 0 and 1 (names ``where``).
    """
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise DataError(
            f"{where}: the mask must be bool or hold only 0 and 1 (1 = masked); got a "
            f"{mask.dtype} mask with other values"
        )
    return mask.bool()


class MaskGenerator:
    """Draws boolean patch masks ``(B, N)``, True = masked.

    Args:
        grid: ``(rows, cols)`` of the patch grid; ``N = rows · cols``.
        mask_ratio: fraction of patches to mask, in ``(0, 1)``.
        mode: ``"random"`` (uniform without replacement, MAE) or ``"block"``
            (rectangles of random area and aspect ratio, BEiT).
        min_block_patches: smallest block area in patches (block mode).
        max_block_patches: largest block area; None = no limit but the target count.
        aspect_ratio: ``(min, max)`` height/width ratio of the blocks (block mode).

    Raises:
        ConfigError: bad grid, ratio, mode or block sizes.

    Example::

        gen = MaskGenerator((14, 14), 0.75, "block")
        mask = gen(64, generator=torch.Generator().manual_seed(0))  # (64, 196) bool
    """

    def __init__(
        self,
        grid: tuple[int, int],
        mask_ratio: float,
        mode: Literal["random", "block"] = "random",
        min_block_patches: int = 4,
        max_block_patches: int | None = None,
        aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> None:
        rows, cols = (int(g) for g in grid)
        if rows <= 0 or cols <= 0:
            raise ConfigError(f"MaskGenerator: grid must be positive (rows, cols), got {grid}")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"MaskGenerator: mask_ratio must be in (0, 1), got {mask_ratio}")
        if mode not in _MODES:
            raise ConfigError(f"MaskGenerator: unknown mode {mode!r}; choose one of {list(_MODES)}")
        self.grid = (rows, cols)
        self.num_patches = rows * cols
        self.num_masked = round(mask_ratio * self.num_patches)
        if not 0 < self.num_masked < self.num_patches:
            raise ConfigError(
                f"MaskGenerator: mask_ratio={mask_ratio} masks {self.num_masked} of "
                f"{self.num_patches} patches; choose a ratio that masks some but not all"
            )
        if min_block_patches < 1:
            raise ConfigError(
                f"MaskGenerator: min_block_patches must be >= 1, got {min_block_patches}"
            )
        lo, hi = aspect_ratio
        if not 0 < lo <= hi:
            raise ConfigError(
                f"MaskGenerator: aspect_ratio must be 0 < min <= max, got {aspect_ratio}"
            )
        self.mask_ratio = mask_ratio
        self.mode = mode
        self.min_block_patches = min_block_patches
        self.max_block_patches = max_block_patches or self.num_masked
        self.log_aspect = (math.log(lo), math.log(hi))

    def __call__(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``batch_size`` masks.

        Args:
            batch_size: rows ``B``.
            generator: CPU random generator; None uses torch's global generator.
            device: where the mask goes (drawn on the CPU).

        Returns:
            ``(B, N)`` bool with exactly :attr:`num_masked` True per row.
        """
        if self.mode == "random":
            noise = torch.rand(batch_size, self.num_patches, generator=generator)  # (B, N)
            keep = noise.argsort(dim=1)[:, : self.num_masked]
            mask = torch.zeros(batch_size, self.num_patches, dtype=torch.bool)
            mask.scatter_(1, keep, True)
        else:
            # one integer seed per row from the torch generator, then numpy for the
            # many tiny rectangle draws (much cheaper than torch ops per rectangle)
            seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator).tolist()
            rows = [self._block_mask(np.random.default_rng(s)) for s in seeds]
            mask = torch.from_numpy(np.array(rows, dtype=bool)).reshape(batch_size, self.num_patches)
        return mask if device is None else mask.to(device)

    def _block_mask(self, rng: np.random.Generator) -> np.ndarray:
        rows, cols = self.grid
        mask = np.zeros((rows, cols), dtype=bool)
        count = 0
        while count < self.num_masked:
            delta = self._add_block(mask, rng, min(self.num_masked - count, self.max_block_patches))
            if delta == 0:
                break
            count += delta
        # rectangles rarely land exactly on the target count: grow the masked
        # region along its border, so the result stays blocky
        while count < self.num_masked:
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= mask[:, :-1]
            grown[:, :-1] |= mask[:, 1:]
            frontier = np.flatnonzero(grown & ~mask)
            if frontier.size == 0:  # nothing masked yet (blocks never fit): start anywhere
                frontier = np.flatnonzero(~mask)
            take = rng.choice(
                frontier, size=min(self.num_masked - count, frontier.size), replace=False
            )
            mask.flat[take] = True
            count += take.size
        return mask

    def _add_block(self, mask: np.ndarray, rng: np.random.Generator, max_patches: int) -> int:
        """BEiT's block step: up to 10 tries to add one rectangle of <= max_patches new patches."""
        rows, cols = self.grid
        for _ in range(10):
            area = rng.uniform(self.min_block_patches, max(max_patches, self.min_block_patches))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h < rows and 0 < w < cols):
                continue
            top = int(rng.integers(0, rows - h + 1))
            left = int(rng.integers(0, cols - w + 1))
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= max_patches:
                window[...] = True
                return new
        return 0

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(grid={self.grid}, mask_ratio={self.mask_ratio}, mode={self.mode!r}, "
            f"num_masked={self.num_masked})"
        )
