"""The field of view: the scan region (fan or rectangle) found from the image alone.

An ultrasound frame holds the scan region — a rectangle (linear probe) or a fan
(convex, phased array) — on a black background with text, rulers and colour bars
around it. :func:`find_fov` finds the region from the image alone:

1. on a coarse grid (≤ ``work_size`` cells a side, cells ≥ 2×2 pixels) a cell is tissue
   when most of its pixels are above a threshold *and* it is textured (speckle): the
   background is dark, and banners, colour bars and labels are flat;
2. a morphological closing bridges dark speckle cells; an opening of ~3 % of the grid
   removes text, ruler ticks, markers and thin bridges to them;
3. the largest 4-connected component is the scan, together with components at least a
   quarter its size (a scan cut in two by an anechoic band that spans its width); what
   the opening shaved off their edges (a sector's apex) grows back by k/2 cells;
4. the convex hull is the field of view: rectangles and fans are convex, and the hull
   puts anechoic structures at the region's edge (bladder, vessels, deep dark tissue)
   back inside. (It also covers the thin segment inside a convex probe's near arc.)

It is a heuristic: a scan that is almost entirely black, or text blocks touching the
scan, can mislead it. ``preprocess(..., detect_fov=False)`` treats the whole image as the field of view
(natural images, pre-cropped data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FieldOfView", "find_fov"]


@dataclass(frozen=True)
class FieldOfView:
    """The scan region of an image.

    Attributes:
        polygon: ``(P, 2)`` convex polygon ``(x, y)`` in source pixel-edge coordinates
            (``0..W``, ``0..H``).
        box: bounding box ``(top, left, bottom, right)`` in source pixels (exclusive ends).
        found: False when no region was found (then the polygon is the whole image).
    """

    polygon: np.ndarray
    box: tuple[int, int, int, int]
    found: bool


def find_fov(
    img: np.ndarray, threshold: float = 0.02, work_size: int = 160, texture: float = 0.003
) -> FieldOfView:
    """Find the scan region (fan or rectangle) of an ultrasound image.

    Args:
        img: ``(H, W)`` float luminance in [0, 1].
        threshold: pixels above it count as signal (the background is below it).
        work_size: cells on the longer side of the coarse grid the search runs on.
        texture: least standard deviation of grey levels in a cell (averaged over 3×3
            cells) for it to count as tissue; flat banners and colour bars fall below.

    Returns:
        The region; ``found=False`` (whole image) when no region of ≥ 1 % of the grid
        stands out, e.g. a blank image.
    """
    h, w = img.shape
    whole = FieldOfView(_rect_polygon(0, 0, h, w), (0, 0, h, w), False)
    if h == 0 or w == 0:
        return whole
    f = max(2, math.ceil(max(h, w) / work_size))  # cell side in source pixels
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    # per cell (one pooling call): mean, mean square, fraction above the threshold
    stats = F.avg_pool2d(torch.stack([x, x * x, (x > threshold).float()])[None], f, f,
                         ceil_mode=True)[0].numpy()  # (3, h', w')  # fmt: skip
    std = np.sqrt(np.maximum(stats[1] - stats[0] ** 2, 0.0))
    # Tissue is textured (speckle); banners, bars and labels are flat.
    textured = _box_mean3(std) > texture
    closed = _erode(_dilate((stats[2] > 0.5) & textured))  # fills speckle gaps
    k = max(3, round(0.03 * max(closed.shape)) | 1)  # odd, ~3 % of the grid
    opened = _dilate(_erode(closed, k), k)  # removes text, ticks, markers, thin bridges
    comp = _main_components(opened)
    if comp is None:
        return whole
    # Give back what the opening shaved off the region's own edges (a sector's apex),
    # growing at most k/2 cells inside the closed mask: not along bridges to labels.
    for _ in range(k // 2):
        comp = _dilate(comp) & closed
    rows = np.flatnonzero(comp.any(axis=1))
    first = comp[rows].argmax(axis=1)
    last = comp.shape[1] - 1 - comp[rows, ::-1].argmax(axis=1)
    # Corners of each row's extreme cells, in source pixel-edge coordinates.
    xs = np.concatenate([first, first, last + 1, last + 1]) * f
    ys = np.concatenate([rows, rows + 1, rows, rows + 1]) * f
    pts = np.stack([np.clip(xs, 0, w), np.clip(ys, 0, h)], axis=1).astype(np.float64)
    hull = _convex_hull(pts)
    x0, y0 = np.floor(hull.min(axis=0)).astype(int)
    x1, y1 = np.ceil(hull.max(axis=0)).astype(int)
    return FieldOfView(hull, (int(y0), int(x0), int(y1), int(x1)), True)


def _dilate(m: np.ndarray, k: int = 3) -> np.ndarray:
    """Binary dilation of a bool grid by a ``k × k`` square (separable shifts)."""
    out = m.copy()
    for s in range(1, k // 2 + 1):
        out[s:] |= m[:-s]
        out[:-s] |= m[s:]
    rows = out.copy()
    for s in range(1, k // 2 + 1):
        out[:, s:] |= rows[:, :-s]
        out[:, :-s] |= rows[:, s:]
    return out


def _erode(m: np.ndarray, k: int = 3) -> np.ndarray:
    """Binary erosion by a ``k × k`` square; outside the grid counts as set, so the
    image border does not erode a region that touches it."""
    return ~_dilate(~m, k)


def _box_mean3(a: np.ndarray) -> np.ndarray:
    """Mean over each cell's 3 × 3 neighbourhood (fewer neighbours at the border)."""
    pad = np.pad(a, 1)
    total = sum(pad[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3))
    count = np.pad(np.ones_like(a), 1)
    n = sum(count[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3))
    return total / n


def _main_components(cells: np.ndarray, min_share: float = 0.25) -> np.ndarray | None:
    """4-connected components of a bool grid at least ``min_share`` as large as the largest
    (a scan cut by an anechoic band spanning its width is two components); None if the
    largest covers < 1 % of the grid. Runs per row + union-find: after the opening a grid
    holds a few runs per row, so the Python loops stay short.
    """
    h, w = cells.shape
    edges = np.diff(np.pad(cells.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    run_rows, starts = np.nonzero(edges == 1)  # row-major: runs ordered by row, then column
    ends = np.nonzero(edges == -1)[1]  # exclusive
    n = len(starts)
    if n == 0:
        return None
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(run_rows, np.arange(h + 1)).tolist()
    s, e = starts.tolist(), ends.tolist()
    for y in range(1, h):
        i, i_end, j, j_end = row_start[y - 1], row_start[y], row_start[y], row_start[y + 1]
        while i < i_end and j < j_end:  # sweep the runs of rows y-1 and y together
            if s[i] < e[j] and s[j] < e[i]:  # column intervals overlap: 4-connected
                a, b = root(i), root(j)
                if a != b:
                    parent[b] = a
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    roots = np.array([root(i) for i in range(n)])
    sizes = np.bincount(roots, weights=ends - starts, minlength=n)
    if sizes.max() < 0.01 * h * w:
        return None
    keep = sizes[roots] >= min_share * sizes.max()
    out = np.zeros((h, w), dtype=bool)
    for k in np.flatnonzero(keep).tolist():
        out[run_rows[k], s[k] : e[k]] = True
    return out


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; ``(P, 2)`` points → hull vertices ``(V, 2)``."""
    points = [tuple(p) for p in np.unique(pts, axis=0).tolist()]  # sorted by x, then y
    if len(points) <= 2:
        return np.array(points, dtype=np.float64)

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for px, py in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (py - ay) - (by - ay) * (px - ax) > 0:
                    break
                chain.pop()
            chain.append((px, py))
        return chain

    lower, upper = half(points), half(points[::-1])
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def _rect_polygon(top: float, left: float, bottom: float, right: float) -> np.ndarray:
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.float64)
