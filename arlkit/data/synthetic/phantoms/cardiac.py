"""Echocardiography (phased array): four standard views with a left-ventricle mask.

Views: parasternal long axis (``plax``), parasternal short axis at the papillary level
(``psax``), apical four-chamber (``a4c``) and apical two-chamber (``a2c``). Chambers
are blood pools (anechoic) inside myocardium; the heart's size, pose and cardiac phase
(LV cavity from end-systole to end-diastole) vary. ``Tissue.labels`` marks the LV cavity
with 1, everything else 0.
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.phantoms import PhantomFamily, register_phantom
from arlkit.data.synthetic.phantoms.common import FLUID, FLUID_ATT, new_tissue
from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import Coords, ellipse, layer, paint, ring, tube
from arlkit.data.synthetic.shapes import texture as tex

__all__ = ["VIEWS", "cardiac"]

#: Standard views, in label order of the ``cardiac_view`` task.
VIEWS: tuple[str, ...] = ("plax", "psax", "a4c", "a2c")

_MYO = 1.0
_BLOOD = FLUID * 1.5


class _Pose:
    """Similarity transform of a heart drawn in a canonical frame centred at ``(0, 0.45)``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.s = rng.uniform(0.85, 1.12)
        self.phi = rng.uniform(-0.15, 0.15)
        self.t = (rng.uniform(-0.05, 0.05), rng.uniform(-0.03, 0.04))

    def __call__(self, x: float, z: float) -> tuple[float, float]:
        c, s = np.cos(self.phi), np.sin(self.phi)
        dx, dz = x, z - 0.45
        return (
            self.t[0] + self.s * (dx * c - dz * s),
            0.45 + self.t[1] + self.s * (dx * s + dz * c),
        )


class _Heart:
    """Paints chambers in pose; walls first, cavities last so septa appear between them."""

    def __init__(self, c: Coords, t: Tissue, rng: np.random.Generator) -> None:
        self.c, self.t, self.rng, self.pose = c, t, rng, _Pose(rng)
        self.myo = 1.0 * tex(c.shape, rng, (40, 40), 0.25) * np.float32(_MYO)
        self.cavities: list[tuple[float, float, float, float, float]] = []
        self.lv = np.zeros(c.shape, np.float32)

    def chamber(
        self, x: float, z: float, rx: float, rz: float, angle: float, wall: float, lv: bool = False
    ) -> None:
        px, pz = self.pose(x, z)
        s, a = self.pose.s, angle + self.pose.phi
        paint(
            self.t.echo,
            ellipse(self.c, px, pz, (rx + wall) * s, (rz + wall) * s, a, 0.01),
            self.myo,
        )
        self.cavities.append((px, pz, rx * s, rz * s, a))
        if lv:
            self.lv = ellipse(self.c, px, pz, rx * s, rz * s, a, 0.006)

    def vessel(self, pts: list[tuple[float, float]], r: float) -> None:
        placed = np.array([self.pose(*p) for p in pts])
        wall = tube(self.c, placed, (r + 0.012) * self.pose.s)
        paint(self.t.echo, wall, 1.3)
        self.t.specular += wall * np.float32(0.6)
        self.cavities.append((placed, r * self.pose.s))  # type: ignore[arg-type]

    def leaflet(self, p0: tuple[float, float], p1: tuple[float, float]) -> None:
        line = tube(self.c, np.array([self.pose(*p0), self.pose(*p1)]), 0.006 * self.pose.s, 0.004)
        self.t.specular += line * np.float32(1.2)

    def finish(self) -> np.ndarray:
        """Fill the cavities with blood; returns the LV mask."""
        for cav in self.cavities:
            if len(cav) == 2:
                m = tube(self.c, cav[0], cav[1])
            else:
                m = ellipse(self.c, *cav[:4], cav[4], 0.006)
            paint(self.t.echo, m, _BLOOD)
            paint(self.t.atten, m, FLUID_ATT)
        return self.lv


def cardiac(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, 0.22, (10, 10), 0.5)  # lung and mediastinum around the heart
    near = layer(c.d, -1.0, rng.uniform(0.05, 0.09), 0.02)  # chest wall and near-field clutter
    paint(t.echo, near, 0.9 * tex(c.shape, rng, (20, 6), 0.4))
    h = _Heart(c, t, rng)
    f = rng.uniform(0.7, 1.0)  # cardiac phase: 0.7 end-systole … 1.0 end-diastole
    lw = 0.04 / f**0.5  # the wall thickens as the cavity shrinks
    if variant == "a4c":
        h.chamber(-0.12, 0.36, 0.07, 0.17 * f**0.5, 0.2, 0.022)  # RV
        h.chamber(0.12, 0.7, 0.085, 0.08, 0.0, 0.015)  # LA
        h.chamber(-0.11, 0.7, 0.075, 0.075, 0.0, 0.015)  # RA
        h.chamber(0.11, 0.34, 0.085 * f, 0.2 * f**0.5, -0.12, lw, lv=True)
        for x0, x1 in ((0.04, 0.08), (0.2, 0.16)):
            h.leaflet((x0, 0.56), (x1, 0.47))
        h.leaflet((-0.05, 0.58), (-0.08, 0.5))
        peri = (0.0, 0.47, 0.3, 0.4)
    elif variant == "a2c":
        h.chamber(0.0, 0.7, 0.09, 0.08, 0.0, 0.015)  # LA
        h.chamber(0.0, 0.34, 0.09 * f, 0.21 * f**0.5, 0.0, lw, lv=True)
        h.leaflet((-0.08, 0.57), (-0.05, 0.48))
        h.leaflet((0.08, 0.57), (0.05, 0.48))
        peri = (0.0, 0.47, 0.2, 0.4)
    elif variant == "plax":
        h.chamber(-0.05, 0.2, 0.25, 0.045, 0.08, 0.02)  # RV outflow under the chest wall
        h.vessel([(0.08, 0.32), (0.5, 0.27)], 0.05)  # aortic root
        h.chamber(0.28, 0.5, 0.12, 0.085, 0.0, 0.015)  # LA
        h.chamber(-0.14, 0.37, 0.25, 0.085 * f, 0.1, lw, lv=True)
        h.leaflet((0.07, 0.38), (-0.02, 0.45))  # anterior mitral leaflet
        h.leaflet((0.14, 0.45), (0.08, 0.47))
        h.leaflet((0.12, 0.3), (0.16, 0.31))  # aortic valve
        dx, dz = h.pose(0.18, 0.68)
        paint(t.echo, ring(c, dx, dz, 0.045, 0.045, 0.012), 1.3)  # descending aorta
        paint(t.echo, ellipse(c, dx, dz, 0.033, 0.033), _BLOOD)
        peri = (-0.05, 0.4, 0.45, 0.22)
    else:  # psax at the papillary muscles
        h.chamber(-0.12, 0.3, 0.18, 0.09, 0.5, 0.02)  # RV crescent (cut by the LV wall below)
        h.chamber(0.03, 0.48, 0.11 * f, 0.1 * f, 0.0, lw * 1.1, lv=True)
        peri = (0.0, 0.45, 0.28, 0.27)
    lv = h.finish()
    if variant == "psax":  # the LV wall covers the RV's lower edge: repaint it, then papillaries
        px, pz = h.pose(0.03, 0.48)
        s = h.pose.s
        wall = ring(c, px, pz, (0.11 * f + lw * 1.1) * s, (0.1 * f + lw * 1.1) * s, lw * 1.1 * s)
        paint(t.echo, wall, h.myo)
        for ang in (2.2, 0.9):
            qx, qz = px + 0.065 * f * s * np.cos(ang), pz + 0.06 * f * s * np.sin(ang)
            paint(t.echo, ellipse(c, qx, qz, 0.022 * s, 0.022 * s), _MYO)
    cx, cz = h.pose(peri[0], peri[1])
    sac = ring(c, cx, cz, peri[2] * h.pose.s, peri[3] * h.pose.s, 0.015, h.pose.phi, 0.008)
    t.specular += sac * (c.z > cz) * np.float32(2.5)  # the posterior pericardium is brightest
    t.labels = (lv > 0.5).astype(np.int64)
    return t


register_phantom(PhantomFamily("cardiac", cardiac, ("phased",), {v: 0.25 for v in VIEWS}))
