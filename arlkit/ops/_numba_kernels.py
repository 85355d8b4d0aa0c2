"""The Numba kernels behind :mod:`arlkit.ops.numba_deform` (imported only when used).

Defined at module level so that Numba caches their machine code next to this file. Layouts:
``x``/``out``/``gy``/``gx`` ``(B, H, W, C)``; ``off``/``goff`` ``(B, G, K, 2, H, W)``;
``w`` ``(K, C)``; ``gw`` ``(B, K, C)`` (one row per image, summed by the caller); ``mask``/``gm``
``(B, G, K, H, W)`` (a dummy when ``has_mask`` is false).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# fast-math without 'nnan'/'ninf': reassociation lets the channel reductions vectorise, while
# comparisons with NaN keep their meaning (the bounds checks rely on it)
_jit = nb.njit(
    parallel=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True,
    error_model="numpy",
)


@nb.njit(inline="always", fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy")
def _position(off, b, g, k, i, j, ks, dil, h, wd):
    """Sample ``k`` of output ``(i, j)``: ``(inside, y0, x0, ly, lx, v00, v01, v10, v11)`` —
    the top-left corner, the fractions, and which of the four corners lie in the image. A
    sample wholly outside (or at a non-finite position) is not ``inside``."""
    centre = (ks - 1) // 2
    py = off[b, g, k, 0, i, j] + (i + (k // ks - centre) * dil)
    px = off[b, g, k, 1, i, j] + (j + (k % ks - centre) * dil)
    if not (py >= -1.0 and py < h and px >= -1.0 and px < wd):
        return False, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    fy = math.floor(py)
    fx = math.floor(px)
    y0 = int(fy)
    x0 = int(fx)
    in_t, in_b = y0 >= 0, y0 + 1 <= h - 1
    in_l, in_r = x0 >= 0, x0 + 1 <= wd - 1
    return (
        True, y0, x0, py - fy, px - fx,
        1.0 if in_t and in_l else 0.0, 1.0 if in_t and in_r else 0.0,
        1.0 if in_b and in_l else 0.0, 1.0 if in_b and in_r else 0.0,
    )


@_jit
def forward(x, off, w, mask, has_mask, ks, dil, groups, out):
    n_b, h, wd, c = x.shape
    k_n = ks * ks
    cg = c // groups
    for bi in nb.prange(n_b * h):
        b = bi // h
        i = bi % h
        coef = np.empty(4, x.dtype)
        for j in range(wd):
            for g in range(groups):
                c0 = g * cg
                ce = c0 + cg
                o = out[b, i, j, c0:ce]
                for k in range(k_n):
                    inside, y0, x0, ly, lx, v00, v01, v10, v11 = _position(
                        off, b, g, k, i, j, ks, dil, h, wd
                    )
                    if not inside:
                        continue  # contributes nothing
                    m = mask[b, g, k, i, j] if has_mask else 1.0
                    # corner weights in the data's precision (via coef): float32 loops vectorise
                    coef[0] = (1 - ly) * (1 - lx) * m * v00
                    coef[1] = (1 - ly) * lx * m * v01
                    coef[2] = ly * (1 - lx) * m * v10
                    coef[3] = ly * lx * m * v11
                    a00, a01, a10, a11 = coef[0], coef[1], coef[2], coef[3]
                    ya, yb = max(y0, 0), min(y0 + 1, h - 1)
                    xa, xb = max(x0, 0), min(x0 + 1, wd - 1)
                    r00, r01 = x[b, ya, xa, c0:ce], x[b, ya, xb, c0:ce]
                    r10, r11 = x[b, yb, xa, c0:ce], x[b, yb, xb, c0:ce]
                    wk = w[k, c0:ce]
                    for c in range(cg):
                        o[c] += wk[c] * (
                            a00 * r00[c] + a01 * r01[c] + a10 * r10[c] + a11 * r11[c]
                        )


@_jit
def backward(x, off, w, mask, has_mask, ks, dil, groups, gy, gx, goff, gw, gm):
    n_b, h, wd, c = x.shape
    k_n = ks * ks
    cg = c // groups
    for bg in nb.prange(n_b * groups):
        b = bg // groups
        g = bg % groups
        c0 = g * cg
        ce = c0 + cg
        coef = np.empty(8, x.dtype)
        zero = np.zeros(1, x.dtype)[0]  # the reductions run in the data's precision
        for i in range(h):
            for j in range(wd):
                gyr = gy[b, i, j, c0:ce]
                for k in range(k_n):
                    inside, y0, x0, ly, lx, v00, v01, v10, v11 = _position(
                        off, b, g, k, i, j, ks, dil, h, wd
                    )
                    if not inside:
                        continue
                    m = mask[b, g, k, i, j] if has_mask else 1.0
                    # bilinear weight of each corner (zero outside the image)
                    b00 = (1 - ly) * (1 - lx) * v00
                    b01 = (1 - ly) * lx * v01
                    b10 = ly * (1 - lx) * v10
                    b11 = ly * lx * v11
                    # validities and masked weights in the data's precision (via coef), so
                    # the channel loops below run in float32 for float32 data and vectorise
                    coef[0], coef[1], coef[2], coef[3] = v00, v01, v10, v11
                    coef[4], coef[5], coef[6], coef[7] = b00 * m, b01 * m, b10 * m, b11 * m
                    v00, v01, v10, v11 = coef[0], coef[1], coef[2], coef[3]
                    c00, c01, c10, c11 = coef[4], coef[5], coef[6], coef[7]
                    ya, yb = max(y0, 0), min(y0 + 1, h - 1)
                    xa, xb = max(x0, 0), min(x0 + 1, wd - 1)
                    r00, r01 = x[b, ya, xa, c0:ce], x[b, ya, xb, c0:ce]
                    r10, r11 = x[b, yb, xa, c0:ce], x[b, yb, xb, c0:ce]
                    wk = w[k, c0:ce]
                    gwk = gw[b, k, c0:ce]
                    d00 = d01 = d10 = d11 = zero
                    for c in range(cg):
                        gs = gyr[c] * wk[c]
                        x00 = r00[c] * v00
                        x01 = r01[c] * v01
                        x10 = r10[c] * v10
                        x11 = r11[c] * v11
                        d00 += gs * x00
                        d01 += gs * x01
                        d10 += gs * x10
                        d11 += gs * x11
                        gwk[c] += gyr[c] * (c00 * x00 + c01 * x01 + c10 * x10 + c11 * x11)
                    q00, q01 = gx[b, ya, xa, c0:ce], gx[b, ya, xb, c0:ce]
                    q10, q11 = gx[b, yb, xa, c0:ce], gx[b, yb, xb, c0:ce]
                    for c in range(cg):
                        gs = gyr[c] * wk[c]
                        q00[c] += gs * c00
                        q01[c] += gs * c01
                        q10[c] += gs * c10
                        q11[c] += gs * c11
                    if has_mask:
                        gm[b, g, k, i, j] = b00 * d00 + b01 * d01 + b10 * d10 + b11 * d11
                    goff[b, g, k, 0, i, j] = m * ((d10 - d00) * (1 - lx) + (d11 - d01) * lx)
                    goff[b, g, k, 1, i, j] = m * ((d01 - d00) * (1 - ly) + (d11 - d10) * ly)
