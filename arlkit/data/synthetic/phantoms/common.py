"""Tissue levels and anatomy pieces shared by the organ phantoms.

Echogenicity is a backscatter *amplitude* relative to liver-like soft tissue (1.0);
attenuation is round-trip dB per unit of imaging depth. The operator's TGC
compensates :data:`SOFT_ATT`, so fluid (less attenuating) leaves posterior
enhancement and bone, stones or air (far more attenuating) leave a shadow.
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import Coords, curve, ellipse, layer, paint, ring, texture, thin

__all__ = [
    "BONE_ATT",
    "FAT",
    "FLUID",
    "FLUID_ATT",
    "MUSCLE",
    "SOFT_ATT",
    "body_wall",
    "calcifications",
    "cyst",
    "new_tissue",
    "rib",
    "stone",
    "striations",
    "vessel",
]

FLUID = 0.02
FAT = 0.45
MUSCLE = 0.55
SOFT_ATT = 30.0
FLUID_ATT = 2.0
BONE_ATT = 4000.0


def new_tissue(
    c: Coords,
    rng: np.random.Generator,
    level: float,
    cells: tuple[int, int] = (12, 12),
    strength: float = 0.2,
) -> Tissue:
    """A uniform medium of echogenicity ``level`` with smooth heterogeneity."""
    echo = texture(c.shape, rng, cells, strength) * np.float32(level)
    return Tissue(echo=echo, atten=c.full(SOFT_ATT), specular=c.full(0.0), tgc=SOFT_ATT)


def striations(
    c: Coords, rng: np.random.Generator, period: float, tilt: float = 0.0, sharp: int = 4
) -> np.ndarray:
    """Fibre pattern ``(L, M)`` in [0, 1]: thin bright lines (muscle septa, tendon fibrils)."""
    wobble = curve(c, rng, 0.0, period * 0.6, 1.5)
    phase = (c.z * np.float32(np.cos(tilt)) + c.x * np.float32(np.sin(tilt)) + wobble) / period
    return (0.5 + 0.5 * np.cos(np.float32(2 * np.pi) * phase)) ** sharp


def body_wall(
    c: Coords,
    t: Tissue,
    rng: np.random.Generator,
    fat: float,
    muscle: float = 0.0,
) -> float:
    """Skin, subcutaneous fat (lobular) and an optional muscle layer, following the skin line.

    Args:
        c: coordinates (uses the beam depth ``c.d``).
        t: tissue painted in place.
        rng: random source.
        fat: thickness of skin + fat (depth units).
        muscle: thickness of the muscle layer below the fat (0 = none).

    Returns:
        Depth of the bottom of the wall.
    """
    skin = layer(c.d, -1.0, 0.012)
    lobules = texture(c.shape, rng, (16, 10), 0.5) * np.float32(FAT)
    fat_bottom = curve(c, rng, fat, 0.01, 2.0)
    paint(t.echo, layer(c.d, 0.012, fat_bottom, 0.01), lobules)
    paint(t.echo, skin, 1.6)
    bottom = fat
    if muscle > 0:
        m_bottom = curve(c, rng, fat + muscle, 0.012, 1.5)
        fibres = np.float32(MUSCLE) * (
            0.6 + 1.4 * striations(c, rng, 0.035, rng.uniform(-0.2, 0.2))
        )
        band = layer(c.d, fat_bottom, m_bottom, 0.008)
        paint(t.echo, band, fibres)
        t.specular += thin(c.d, m_bottom, 0.008) * np.float32(0.8)  # fascia
        bottom = fat + muscle
    return bottom


def cyst(
    c: Coords, t: Tissue, cx: float, cz: float, rx: float, rz: float, angle: float = 0.0
) -> np.ndarray:
    """Anechoic, barely attenuating ellipse (posterior enhancement); returns its mask."""
    m = ellipse(c, cx, cz, rx, rz, angle)
    paint(t.echo, m, FLUID)
    paint(t.atten, m, FLUID_ATT)
    return m


def vessel(
    c: Coords, t: Tissue, mask: np.ndarray, wall: np.ndarray | None = None, bright: float = 1.2
) -> None:
    """Fill ``mask`` with blood; ``wall`` (a shell mask) becomes a bright coherent wall."""
    paint(t.echo, mask, FLUID * 1.5)
    paint(t.atten, mask, FLUID_ATT)
    if wall is not None:
        t.specular += wall * np.float32(bright)


def stone(c: Coords, t: Tissue, cx: float, cz: float, rx: float, rz: float) -> np.ndarray:
    """Calculus or bone: bright leading surface, clean acoustic shadow behind."""
    body = ellipse(c, cx, cz, rx, rz, edge=0.004)
    shell = ring(c, cx, cz, rx, rz, max(0.006, min(rx, rz) * 0.3), edge=0.004)
    front = shell * (c.z < cz)
    t.specular += front * np.float32(5.0)
    paint(t.echo, body, 2.0)
    paint(t.atten, body, BONE_ATT)
    return body


def rib(c: Coords, t: Tissue, cx: float, cz: float, rx: float, rz: float) -> np.ndarray:
    """A rib in cross-section: curved bright cortex and a shadow through the whole depth."""
    return stone(c, t, cx, cz, rx, rz)


def calcifications(
    c: Coords,
    t: Tissue,
    rng: np.random.Generator,
    cx: float,
    cz: float,
    rx: float,
    rz: float,
    count: int,
    radius: float = 0.006,
    shadow: bool = False,
) -> None:
    """``count`` punctate echogenic foci scattered inside an ellipse (microcalcifications)."""
    for _ in range(count):
        r, a = np.sqrt(rng.uniform(0, 0.7)), rng.uniform(0, 2 * np.pi)
        px, pz = cx + r * rx * np.cos(a), cz + r * rz * np.sin(a)
        dot = ellipse(c, px, pz, radius, radius, edge=0.004)
        t.specular += dot * np.float32(rng.uniform(2.5, 4.0))
        if shadow:
            paint(t.atten, dot, BONE_ATT / 4)
