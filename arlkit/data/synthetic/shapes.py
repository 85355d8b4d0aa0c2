"""Shape primitives for phantoms, evaluated on Cartesian sample positions.

Every function takes arrays ``x, z`` (any equal shapes, depth units, z pointing into
the body) and returns a float32 *soft* mask in [0, 1] whose edge ramps over ``edge``
depth units, so boundaries are anti-aliased on the coarse phantom grid. Random
variation comes from an explicit ``np.random.Generator``; nothing here keeps state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "Coords",
    "blob",
    "curve",
    "ellipse",
    "layer",
    "outline",
    "paint",
    "ring",
    "texture",
    "thin",
    "tube",
]

_EDGE = 0.006


@dataclass
class Coords:
    """Where a phantom is evaluated.

    Attributes:
        x: ``(L, M)`` lateral position (0 = centre of the aperture).
        z: ``(L, M)`` depth below the centre of the transducer face.
        d: ``(L, M)`` depth along the beam (distance below the skin line).
        probe: ``"linear"``, ``"convex"`` or ``"phased"``.
        width, radius, angle: the probe geometry (see
            :class:`~arlkit.data.synthetic.geometry.Probe`), used to find the index window
            that covers a region, so small shapes cost little.
        xbin, xlut: optional lookup of ``x``: ``x ≈ xlut[xbin]``; functions of ``x`` alone
            (depth profiles) are then evaluated on ``xlut`` and gathered.
    """

    x: np.ndarray
    z: np.ndarray
    d: np.ndarray
    probe: str
    width: float = 1.0
    radius: float = 0.0
    angle: float = 0.0
    xbin: np.ndarray | None = None
    xlut: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    def full(self, value: float) -> np.ndarray:
        return np.full(self.shape, value, np.float32)

    def window(self, x0: float, x1: float, z0: float, z1: float) -> tuple[slice, slice]:
        """Index slices ``(lines, samples)`` covering the box ``[x0, x1] × [z0, z1]``."""
        lines, samples = self.shape
        if self.probe == "linear":
            u0, u1 = x0 / self.width + 0.5, x1 / self.width + 0.5
            d0, d1 = z0, z1
        else:
            apex = -self.radius  # centre of the beam fan
            zs0, zs1 = max(z0 - apex, 1e-6), max(z1 - apex, 1e-6)
            corners = [math.atan2(x, zz) for x in (x0, x1) for zz in (zs0, zs1)]
            u0 = min(corners) / self.angle + 0.5
            u1 = max(corners) / self.angle + 0.5
            near_x = min(max(0.0, x0), x1)
            d0 = math.hypot(near_x, zs0) - self.radius
            d1 = max(math.hypot(x0, zs1), math.hypot(x1, zs1)) - self.radius

        def clamp(v: float, hi: int) -> int:
            return min(max(int(v), 0), hi)

        l0 = clamp(math.floor(u0 * lines - 0.5) - 1, lines)
        l1 = clamp(math.ceil(u1 * lines - 0.5) + 2, lines)
        m0 = clamp(math.floor(d0 * samples - 0.5) - 1, samples)
        m1 = clamp(math.ceil(d1 * samples - 0.5) + 2, samples)
        return slice(l0, max(l0, l1)), slice(m0, max(m0, m1))


def _unit(a: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] in place (two ufuncs: far less overhead than ``np.clip``)."""
    np.maximum(a, 0, out=a)
    return np.minimum(a, 1, out=a)


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
    """Soft step of a signed distance (positive inside)."""
    out = signed * np.float32(1.0 / edge)
    out += np.float32(0.5)
    return _unit(out)


def _local(x: np.ndarray, z: np.ndarray, cx: float, cz: float, angle: float):
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dz = x - np.float32(cx), z - np.float32(cz)
    return dx * c + dz * s, dz * c - dx * s


def _boxed(c: Coords, x0: float, x1: float, z0: float, z1: float, fn) -> np.ndarray:
    """Evaluate ``fn(x, z)`` inside the index window of a box; 0 elsewhere."""
    out = np.zeros(c.shape, np.float32)
    sl = c.window(x0, x1, z0, z1)
    if sl[0].stop > sl[0].start and sl[1].stop > sl[1].start:
        out[sl] = fn(c.x[sl], c.z[sl])
    return out


def ellipse(
    c: Coords,
    cx: float,
    cz: float,
    rx: float,
    rz: float,
    angle: float = 0.0,
    edge: float = _EDGE,
) -> np.ndarray:
    """Filled ellipse centred at ``(cx, cz)`` with semi-axes ``rx, rz`` rotated by ``angle``."""

    def fn(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v = _local(x, z, cx, cz, angle)
        q = np.sqrt((u / np.float32(rx)) ** 2 + (v / np.float32(rz)) ** 2)
        return _soft((1 - q) * np.float32(min(rx, rz)), edge)

    # the soft edge reaches q = 1 + edge / (2 min(rx, rz)) along the major axis
    r = max(rx, rz) * (1 + 0.5 * edge / min(rx, rz)) + edge
    return _boxed(c, cx - r, cx + r, cz - r, cz + r, fn)


def ring(
    c: Coords,
    cx: float,
    cz: float,
    rx: float,
    rz: float,
    thickness: float,
    angle: float = 0.0,
    edge: float = _EDGE,
) -> np.ndarray:
    """Elliptical shell of the given ``thickness`` (outer semi-axes ``rx, rz``)."""
    outer = ellipse(c, cx, cz, rx, rz, angle, edge)
    inner = ellipse(c, cx, cz, rx - thickness, rz - thickness, angle, edge)
    outer -= inner
    return _unit(outer)


def outline(rng: np.random.Generator, irregularity: float, spikes: float = 0.0) -> np.ndarray:
    """Random radial harmonics ``(K, 2)`` (amplitude, phase) for :func:`blob`.

    Args:
        rng: random source.
        irregularity: relative amplitude of low-order lobulation (0 = smooth ellipse).
        spikes: relative amplitude of high-order spiculation.
    """
    k = np.arange(2, 19)
    amp = np.where(k < 7, irregularity / k**0.5, spikes * rng.uniform(0.3, 1.0, k.size))
    amp = amp * rng.uniform(0.5, 1.0, k.size)
    return np.stack([amp, rng.uniform(0, 2 * np.pi, k.size)], axis=1)


def blob(
    c: Coords,
    cx: float,
    cz: float,
    rx: float,
    rz: float,
    harmonics: np.ndarray,
    angle: float = 0.0,
    edge: float = _EDGE,
) -> np.ndarray:
    """Ellipse whose radius varies with the polar angle: ``r(φ) (1 + Σ a_k cos(kφ + p_k))``.

    Low orders make a lobulated mass, high orders a spiculated (stellate) margin.
    """

    def fn(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v = _local(x, z, cx, cz, angle)
        u, v = u / np.float32(rx), v / np.float32(rz)
        q = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        radius = np.ones_like(q)
        for k, (a, p) in enumerate(harmonics, start=2):
            if a > 1e-3:
                radius += np.float32(a) * np.cos(k * phi + np.float32(p))
        return _soft((radius - q) * np.float32(min(rx, rz)), edge)

    grow = float(np.abs(harmonics[:, 0]).sum()) + 0.5 * edge / min(rx, rz)
    r = max(rx, rz) * (1 + grow) + edge
    return _boxed(c, cx - r, cx + r, cz - r, cz + r, fn)


def tube(
    c: Coords,
    points: np.ndarray,
    radius: float | np.ndarray,
    edge: float = _EDGE,
) -> np.ndarray:
    """Union of capsules along a polyline ``points (P, 2)`` of ``(x, z)``: vessels, ducts.

    ``radius`` may be one value or one per segment.
    """
    points = np.asarray(points, np.float64)
    radii = np.broadcast_to(np.asarray(radius, np.float32), (len(points) - 1,))

    def fn(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        best = np.full(x.shape, -1e3, np.float32)
        for (x0, z0), (x1, z1), r in zip(points[:-1], points[1:], radii):
            dx, dz = np.float32(x1 - x0), np.float32(z1 - z0)
            ox, oz = x - np.float32(x0), z - np.float32(z0)
            t = (ox * dx + oz * dz) / np.float32(dx * dx + dz * dz + 1e-12)
            _unit(t)
            dist = np.hypot(ox - t * dx, oz - t * dz)
            np.maximum(best, np.float32(r) - dist, out=best)
        return _soft(best, edge)

    r = float(radii.max()) + edge
    (xa, za), (xb, zb) = points.min(0), points.max(0)
    return _boxed(c, xa - r, xb + r, za - r, zb + r, fn)


def curve(
    x: np.ndarray | Coords, rng: np.random.Generator, base: float, amp: float, freq: float = 2.0
) -> np.ndarray:
    """A smooth random depth profile ``z(x) = base + Σ a_k sin(2π f_k x + p_k)`` (3 terms).

    Pass the :class:`Coords` (rather than ``c.x``) to evaluate it on the lookup table.
    """
    xs = x.xlut if isinstance(x, Coords) and x.xlut is not None else x
    if isinstance(xs, Coords):
        xs = xs.x
    out = np.full(xs.shape, base, np.float32)
    for k in range(3):
        f = freq * (k + 1) * rng.uniform(0.7, 1.3)
        out += np.float32(amp / (k + 1) * rng.uniform(-1, 1)) * np.sin(
            np.float32(2 * np.pi * f) * xs + np.float32(rng.uniform(0, 2 * np.pi))
        )
    if isinstance(x, Coords) and x.xlut is not None:
        return out[x.xbin]
    return out


def layer(z: np.ndarray, top: np.ndarray | float, bottom: np.ndarray | float, edge: float = _EDGE):
    """Soft band ``top < z < bottom`` (profiles from :func:`curve` or constants)."""
    return np.minimum(_soft(z - top, edge), _soft(bottom - z, edge))


def thin(d: np.ndarray, centre: np.ndarray | float, width: float) -> np.ndarray:
    """A thin bright line at depth ``centre``: Gaussian profile, peak 1.

    Its standard deviation is at least 0.6 sample of ``d`` (a 2-D grid, depth along the
    last axis) so the peak does not alias when the line falls between samples.
    """
    spacing = float(abs(d[0, 1] - d[0, 0])) if d.ndim == 2 and d.shape[1] > 1 else 0.0
    sigma = np.float32(max(width / 2.355, 0.6 * spacing))
    u = (d - centre) / sigma
    return np.exp(np.float32(-0.5) * u * u)


@lru_cache(maxsize=64)
def _lerp_table(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(n_out,)`` and weights for cell-centred linear upsampling of ``n_in`` values."""
    pos = np.clip((np.arange(n_out) + 0.5) / n_out * n_in - 0.5, 0, max(n_in - 1, 0))
    lo = np.minimum(np.floor(pos).astype(np.int64), max(n_in - 2, 0))
    return lo, (pos - lo).astype(np.float32)


def _upsample_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = a.shape[axis]
    if n_in == 1:
        return np.repeat(a, n_out, axis=axis)
    lo, w = _lerp_table(n_out, n_in)
    if axis == 0:
        return a[lo] * (1 - w[:, None]) + a[lo + 1] * w[:, None]
    return a[:, lo] * (1 - w) + a[:, lo + 1] * w


def texture(
    shape: tuple[int, int], rng: np.random.Generator, cells: tuple[int, int], strength: float
) -> np.ndarray:
    """Smooth multiplicative heterogeneity ``exp(strength · g)``, ``g`` a unit Gaussian field.

    ``cells`` is the number of independent values along (lines, depth) before linear
    interpolation; small numbers give large blotches (parenchymal texture, fat lobules).
    (Gathers rather than interpolation matrices: tiny BLAS calls are slow under load.)
    """
    field = rng.standard_normal(cells).astype(np.float32) * np.float32(strength)
    smooth = _upsample_axis(_upsample_axis(np.exp(field), shape[0], 0), shape[1], 1)
    return smooth


def paint(target: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    """Blend ``value`` into ``target`` where ``mask`` is set (in place): ``t + m (v - t)``."""
    target += mask * (value - target)
    return target
