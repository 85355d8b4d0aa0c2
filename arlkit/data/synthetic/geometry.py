"""Transducer geometry: the beam-domain grid and its scan conversion to a square image.

An ultrasound scanner acquires echoes along *scan lines* (beams); each line is sampled
in depth. The raw data is therefore a ``(lines, samples)`` array, the *beam domain*.
Scan conversion resamples it onto the display's Cartesian pixels, which gives the
familiar shapes: a rectangle for a linear array, a fan with a curved top for a convex
array, and a sector from a near-point apex for a phased array.

All lengths are in units of the imaging depth (depth 1 = the bottom of the image), so
the same grid serves every organ; a phantom decides what one depth unit means.
Grids and conversion tables depend only on ``(probe, size)`` and are cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PROBES", "BeamGrid", "Probe", "beam_grid"]


@dataclass(frozen=True)
class Probe:
    """Geometry of one transducer family.

    Args:
        kind: ``"linear"``, ``"convex"`` or ``"phased"``.
        width: aperture width of a linear array (depth units).
        radius: convex: radius of curvature of the face; phased: distance of the
            virtual apex above the skin (depth units).
        angle: opening angle of the sector (radians); unused for linear arrays.
    """

    kind: str
    width: float = 1.0
    radius: float = 0.0
    angle: float = 0.0

    @property
    def sector(self) -> bool:
        return self.kind != "linear"


#: The three geometries the corpus draws from (typical proportions of clinical probes).
PROBES: dict[str, Probe] = {
    "linear": Probe("linear", width=0.95),
    "convex": Probe("convex", radius=0.4, angle=math.radians(66.0)),
    "phased": Probe("phased", radius=0.03, angle=math.radians(80.0)),
}


@dataclass(frozen=True, eq=False)
class BeamGrid:
    """Beam-domain sampling of one probe for one output size, with scan-conversion tables.

    Three depth samplings share the scan lines: the RF signal (``N = 2 * size``
    samples, fine enough for the carrier), the detected envelope (``N / 2``: the
    analytic signal occupies half the band, so it is decimated exactly by 2) and the
    phantom (``M = N / step``: tissue maps are smooth in depth, so they are evaluated
    coarsely and repeated; the speckle keeps the full resolution).

    Attributes:
        probe: the geometry.
        size: output image side (pixels).
        lines: number of scan lines ``L``.
        samples: RF samples per line ``N``.
        step: RF samples per phantom sample.
        depth: ``(N,)`` depth of each RF sample along its beam, in ``(0, 1)``.
        x, z: ``(L, M)`` Cartesian position of each phantom sample.
        d: ``(L, M)`` depth along the beam of each phantom sample (follows the skin line).
        fov: ``(size, size)`` bool, pixels inside the field of view.
        pix: ``(P,)`` flat indices of the field-of-view pixels.
        idx: ``(4, P)`` flat *envelope-grid* ``(L, N / 2)`` indices of the bilinear
            neighbours of each pixel.
        wts: ``(4, P)`` bilinear weights (rows sum to 1).
        near: ``(P,)`` flat envelope-grid index of each pixel's nearest neighbour.
        xlut, xbin: ``x ≈ xlut[xbin]`` (512 bins), for cheap functions of ``x`` alone.
    """

    probe: Probe
    size: int
    lines: int
    samples: int
    step: int
    depth: np.ndarray
    x: np.ndarray
    z: np.ndarray
    d: np.ndarray
    fov: np.ndarray
    pix: np.ndarray
    idx: np.ndarray
    wts: np.ndarray
    near: np.ndarray
    xlut: np.ndarray
    xbin: np.ndarray

    @property
    def phantom_shape(self) -> tuple[int, int]:
        return self.x.shape

    @property
    def envelope_shape(self) -> tuple[int, int]:
        return (self.lines, self.samples // 2)

    def fov_values(self, beam: np.ndarray) -> np.ndarray:
        """Bilinear samples ``(P,)`` of an envelope-grid array ``(L, N/2)`` at the FOV pixels."""
        flat = beam.reshape(-1)
        vals = flat[self.idx[0]] * self.wts[0]
        for k in range(1, 4):
            vals += flat[self.idx[k]] * self.wts[k]
        return vals

    def to_image(self, values: np.ndarray) -> np.ndarray:
        """Place ``(P,)`` FOV pixel values into a ``(size, size)`` image (0 outside)."""
        out = np.zeros(self.size * self.size, values.dtype)
        out[self.pix] = values
        return out.reshape(self.size, self.size)

    def scan_convert(self, beam: np.ndarray) -> np.ndarray:
        """Resample an envelope-grid array ``(L, N/2)`` onto the square display (bilinear)."""
        return self.to_image(self.fov_values(beam))

    def scan_convert_nearest(self, beam: np.ndarray) -> np.ndarray:
        """Nearest-neighbour scan conversion (for label maps); 0 outside the field of view."""
        return self.to_image(beam.reshape(-1)[self.near])


def _beam_to_xz(probe: Probe, u: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cartesian ``(x, z)`` of lateral position ``u`` in [0, 1] and beam depth ``d``."""
    if not probe.sector:
        return (u - 0.5) * probe.width + 0.0 * d, d + 0.0 * u
    theta = (u - 0.5) * probe.angle
    rho = probe.radius + d
    # z = 0 at the centre of the transducer face; the face curves up towards its edges
    return rho * np.sin(theta), rho * np.cos(theta) - probe.radius


def _xz_to_beam(probe: Probe, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_beam_to_xz`: ``(u, d)`` of Cartesian points."""
    if not probe.sector:
        return x / probe.width + 0.5, z
    zz = z + probe.radius
    rho = np.hypot(x, zz)
    theta = np.arctan2(x, zz)
    return theta / probe.angle + 0.5, rho - probe.radius


def _extent(probe: Probe) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, x1, z0, z1)`` of the field of view."""
    if not probe.sector:
        return -probe.width / 2, probe.width / 2, 0.0, 1.0
    half = probe.angle / 2
    reach = (probe.radius + 1.0) * math.sin(half)
    top = probe.radius * (math.cos(half) - 1.0)
    return -reach, reach, top, 1.0


@lru_cache(maxsize=32)
def beam_grid(probe: Probe, size: int) -> BeamGrid:
    """The cached beam grid and scan-conversion tables of ``probe`` at ``size`` pixels.

    About 0.75 scan lines per output pixel across the aperture and two RF samples per
    pixel of depth: enough for a carrier of 3-4 samples per period. Phantoms get one
    sample per pixel of depth below 160 pixels, one per two pixels above.

    Args:
        probe: transducer geometry.
        size: output side in pixels (>= 16).

    Returns:
        The :class:`BeamGrid`.
    """
    lines = max(16, round(0.75 * size))
    samples = 2 * size
    step = 4 if size >= 160 and size % 2 == 0 else 2
    depth = ((np.arange(samples) + 0.5) / samples).astype(np.float32)
    u = ((np.arange(lines) + 0.5) / lines)[:, None]
    d_ph = ((np.arange(samples // step) + 0.5) / (samples // step))[None, :]
    x, z = _beam_to_xz(probe, u, d_ph)
    d = np.broadcast_to(d_ph, x.shape)

    # display pixels: centred square box around the field of view
    x0, x1, z0, z1 = _extent(probe)
    scale = max(x1 - x0, z1 - z0) / size
    centre = (np.arange(size) + 0.5 - size / 2) * scale
    px = (x0 + x1) / 2 + centre[None, :]
    pz = (z0 + z1) / 2 + centre[:, None]
    pu, pd = _xz_to_beam(
        probe, np.broadcast_to(px, (size, size)), np.broadcast_to(pz, (size, size))
    )
    fov = (pu >= 0) & (pu <= 1) & (pd >= 0) & (pd <= 1)
    pix = np.flatnonzero(fov)
    xlut = np.linspace(x.min(), x.max(), 512)
    xbin = np.rint((x - x.min()) / (x.max() - x.min()) * 511).astype(np.intp)
    env = samples // 2  # envelope samples per line
    a = np.clip(pu.reshape(-1)[pix] * lines - 0.5, 0, lines - 1)  # fractional line index
    # envelope sample k sits at RF sample 2k, depth (2k + 0.5) / N
    b = np.clip((pd.reshape(-1)[pix] * samples - 0.5) / 2, 0, env - 1)
    a0 = np.minimum(np.floor(a).astype(np.int64), lines - 2)
    b0 = np.minimum(np.floor(b).astype(np.int64), env - 2)
    fa, fb = (a - a0).astype(np.float32), (b - b0).astype(np.float32)
    base = a0 * env + b0
    idx = np.stack([base, base + 1, base + env, base + env + 1])
    wts = np.stack([(1 - fa) * (1 - fb), (1 - fa) * fb, fa * (1 - fb), fa * fb])
    return BeamGrid(
        probe=probe,
        size=size,
        lines=lines,
        samples=samples,
        step=step,
        depth=depth,
        x=np.ascontiguousarray(x, np.float32),
        z=np.ascontiguousarray(z, np.float32),
        d=np.ascontiguousarray(d, np.float32),
        fov=fov,
        pix=pix,
        idx=idx,
        wts=wts.astype(np.float32),
        near=idx[np.argmax(wts, axis=0), np.arange(pix.size)],
        xlut=xlut.astype(np.float32),
        xbin=xbin,
    )
