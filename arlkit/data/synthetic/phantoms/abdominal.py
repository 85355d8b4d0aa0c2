"""Abdominal organs scanned with a convex array: liver, gallbladder, kidney, spleen, pancreas.

The gallbladder carries the local findings of its task: a polyp (small echogenic,
non-shadowing, attached to the wall) or a tumour (irregular wall-based mass) against a
normal anechoic lumen; stones (bright, shadowing, dependent) and sludge appear in the
pretraining corpus.
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.phantoms import PhantomFamily, register_phantom
from arlkit.data.synthetic.phantoms.common import (
    FLUID,
    FLUID_ATT,
    MUSCLE,
    body_wall,
    cyst,
    new_tissue,
    rib,
    stone,
    vessel,
)
from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import (
    Coords,
    blob,
    curve,
    ellipse,
    layer,
    outline,
    paint,
    ring,
    thin,
    tube,
)
from arlkit.data.synthetic.shapes import texture as tex

__all__ = ["abdomen", "gallbladder", "kidney", "liver", "pancreas", "portal_tree", "spleen"]


def abdomen(c: Coords, rng: np.random.Generator, organ_echo: float = 1.0) -> tuple[Tissue, float]:
    """Abdominal wall over parenchyma of echogenicity ``organ_echo``; returns (tissue, wall depth)."""
    t = new_tissue(c, rng, organ_echo, (14, 14), 0.18)
    paint(t.echo, c.full(1.0), organ_echo * tex(c.shape, rng, (48, 48), 0.12))
    wall = body_wall(c, t, rng, rng.uniform(0.03, 0.07), rng.uniform(0.03, 0.06))
    t.specular += thin(c.d, wall + 0.003, 0.006)  # peritoneum
    return t, wall


def portal_tree(c: Coords, t: Tissue, rng: np.random.Generator, n: int, walls: bool) -> None:
    """``n`` branching vessels; portal veins have bright walls, hepatic veins do not."""
    for _ in range(n):
        x0, z0 = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.85)
        pts = [(x0, z0)]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(3):
            ang += rng.uniform(-0.5, 0.5)
            step = rng.uniform(0.08, 0.18)
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        pts = np.array(pts)
        r = rng.uniform(0.012, 0.035) * np.array([1.0, 0.8, 0.6])
        lumen = tube(c, pts, r)
        wall = np.clip(tube(c, pts, r + 0.008) - lumen, 0, 1) if walls else None
        vessel(c, t, lumen, wall, 1.0)


def diaphragm(c: Coords, t: Tissue, rng: np.random.Generator, depth: float) -> np.ndarray:
    """Curved bright diaphragm near the bottom; lung (air-filled, mirror-like haze) beyond."""
    line = curve(c, rng, depth, 0.02, 0.6) + np.float32(rng.uniform(0.1, 0.3)) * c.x**2
    band = layer(c.z, line, line + 0.015, 0.006)
    t.specular += band * np.float32(3.5)
    beyond = layer(c.z, line + 0.015, 9.0, 0.01)
    paint(t.echo, beyond, 0.5 * tex(c.shape, rng, (20, 10), 0.4))
    return line


def liver(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = abdomen(c, rng, 1.0 if variant != "steatosis" else 1.7)
    if variant == "steatosis":
        t.atten[...] = np.where(c.d > wall, 55.0, t.atten)  # bright liver, deep fall-off
    diaphragm(c, t, rng, rng.uniform(0.78, 0.92))
    portal_tree(c, t, rng, int(rng.integers(2, 4)), walls=True)
    portal_tree(c, t, rng, int(rng.integers(1, 3)), walls=False)
    if rng.random() < 0.3:  # right kidney in Morison's pouch
        kidney_section(c, t, rng, rng.uniform(-0.4, 0.4), rng.uniform(0.72, 0.82), 0.22, 0.1)
    cx, cz, r = rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.65), rng.uniform(0.05, 0.1)
    if variant == "cyst":
        cyst(c, t, cx, cz, r, r * rng.uniform(0.8, 1.0), rng.uniform(-1, 1))
    elif variant == "hemangioma":
        m = blob(c, cx, cz, r, r * 0.9, outline(rng, 0.06), 0.0, 0.005)
        paint(t.echo, m, rng.uniform(2.0, 3.0))
    elif variant == "metastasis":
        halo = ellipse(c, cx, cz, r, r, edge=0.01)
        paint(t.echo, halo, 0.25)
        paint(t.echo, ellipse(c, cx, cz, r * 0.65, r * 0.65, edge=0.01), 1.3)
    return t


def kidney_section(
    c: Coords, t: Tissue, rng: np.random.Generator, cx: float, cz: float, rx: float, rz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Kidney: perirenal fat, capsule, cortex, pyramids and echogenic sinus; returns (organ, sinus)."""
    a = rng.uniform(-0.35, 0.35)
    paint(t.echo, ellipse(c, cx, cz, rx + 0.035, rz + 0.035, a, 0.012), 1.8)  # perirenal fat
    organ = ellipse(c, cx, cz, rx, rz, a, 0.006)
    paint(t.echo, organ, 0.45 * tex(c.shape, rng, (30, 30), 0.1))
    t.specular += ring(c, cx, cz, rx, rz, 0.007, a) * np.float32(1.2)
    ca, sa = np.cos(a), np.sin(a)
    for phi in np.linspace(0, 2 * np.pi, int(rng.integers(6, 9)), endpoint=False):
        u, v = 0.62 * rx * np.cos(phi), 0.62 * rz * np.sin(phi)
        px, pz = cx + u * ca - v * sa, cz + u * sa + v * ca
        paint(t.echo, ellipse(c, px, pz, 0.035, 0.022, phi + a + np.pi / 2), 0.18)
    sinus = blob(c, cx, cz, rx * 0.5, rz * 0.4, outline(rng, 0.18), a, 0.01)
    paint(t.echo, sinus, 2.6 * tex(c.shape, rng, (30, 30), 0.3))
    return organ, sinus


def kidney(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = abdomen(c, rng, 0.6)
    paint(t.echo, layer(c.z, wall, curve(c, rng, 0.3, 0.05), 0.01), 1.0)  # liver window
    paint(t.echo, layer(c.z, curve(c, rng, 0.78, 0.04), 9.0, 0.02), MUSCLE)  # psoas / QL
    cx, cz = rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.58)
    rx, rz = rng.uniform(0.32, 0.4), rng.uniform(0.15, 0.2)
    organ, sinus = kidney_section(c, t, rng, cx, cz, rx, rz)
    if variant == "cyst":
        r = rng.uniform(0.04, 0.08)
        cyst(c, t, cx + rng.choice([-1, 1]) * rx * 0.6, cz + rng.uniform(-0.3, 0.3) * rz, r, r)
    elif variant == "stone":
        s = rng.uniform(0.015, 0.03)
        stone(c, t, cx + rng.uniform(-0.3, 0.3) * rx, cz, s, s * 0.8)
    elif variant == "hydronephrosis":
        paint(t.echo, ellipse(c, cx, cz, rx * 0.35, rz * 0.3), FLUID)
        for phi in np.linspace(0, 2 * np.pi, 5, endpoint=False):
            px, pz = cx + 0.45 * rx * np.cos(phi), cz + 0.45 * rz * np.sin(phi)
            paint(t.echo, ellipse(c, px, pz, 0.04, 0.03, phi), FLUID)
        paint(t.atten, sinus, FLUID_ATT)
    return t


def gallbladder(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = abdomen(c, rng, 1.0)
    portal_tree(c, t, rng, int(rng.integers(1, 3)), walls=True)
    cx, cz = rng.uniform(-0.15, 0.15), rng.uniform(0.38, 0.5)
    rx, rz, a = rng.uniform(0.26, 0.34), rng.uniform(0.12, 0.17), rng.uniform(-0.35, 0.35)
    shape = outline(rng, 0.04)
    lumen = blob(c, cx, cz, rx, rz, shape, a, 0.006)
    outer = blob(c, cx, cz, rx + 0.012, rz + 0.012, shape, a, 0.006)
    paint(t.echo, outer, 1.4)
    t.specular *= 1 - outer  # no vessel walls run through the gallbladder
    t.specular += np.clip(outer - lumen, 0, 1) * np.float32(0.8)
    paint(t.echo, lumen, FLUID)
    paint(t.atten, lumen, FLUID_ATT)
    ca, sa = np.cos(a), np.sin(a)

    def on_wall(frac: float, side: float) -> tuple[float, float]:
        u, v = frac * rx, side * rz * np.sqrt(max(0.0, 1 - frac**2))
        return cx + u * ca - v * sa, cz + u * sa + v * ca

    if variant == "stone":
        for _ in range(int(rng.integers(1, 4))):
            s = rng.uniform(0.018, 0.035)
            sx, sz = on_wall(rng.uniform(-0.5, 0.5), 1.0)
            stone(c, t, sx, sz - s, s, s * 0.85)
    elif variant == "polyp":
        for _ in range(int(rng.integers(1, 3))):
            s = rng.uniform(0.028, 0.045)
            px, pz = on_wall(rng.uniform(-0.6, 0.6), rng.choice([-1.0, 1.0]))
            pz += s if pz < cz else -s  # protrudes into the lumen from its stalk
            paint(t.echo, ellipse(c, px, pz, s, s * 0.9, edge=0.004) * outer, rng.uniform(2.0, 3.0))
    elif variant == "tumour":
        s = rng.uniform(0.05, 0.085)
        px, pz = on_wall(rng.uniform(-0.5, 0.5), rng.choice([-1.0, 1.0]))
        pz += 0.4 * s if pz < cz else -0.4 * s
        m = blob(c, px, pz, s * 1.3, s, outline(rng, 0.15, 0.03), a, 0.008) * outer
        paint(t.echo, m, rng.uniform(1.0, 1.6) * tex(c.shape, rng, (30, 30), 0.3))
        paint(t.atten, m, 35.0)
    elif variant == "sludge":
        level = on_wall(0.0, 1.0)[1] - rng.uniform(0.03, 0.07)
        paint(t.echo, lumen * layer(c.z, level, 9.0, 0.01), 0.35)
    return t


def spleen(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = abdomen(c, rng, 0.45)
    for _ in range(int(rng.integers(1, 3))):  # intercostal view: rib shadows
        rib(c, t, rng.uniform(-0.22, 0.22), wall + rng.uniform(0.03, 0.06), 0.06, 0.025)
    scale = 1.25 if variant == "splenomegaly" else 1.0
    cx, cz = rng.uniform(-0.1, 0.1), rng.uniform(0.45, 0.55)
    rx, rz, a = 0.4 * scale, 0.22 * scale, rng.uniform(-0.4, 0.1)
    organ = ellipse(c, cx, cz, rx, rz, a, 0.008)
    bite = ellipse(c, cx + 0.1, cz + rz * 0.9, rx * 0.7, rz * 0.6, a, 0.01)
    organ = np.clip(organ - bite, 0, 1)
    paint(t.echo, organ, 1.3 * tex(c.shape, rng, (40, 40), 0.08))
    t.specular += ring(c, cx, cz, rx, rz, 0.007, a) * (c.z < cz) * np.float32(1.5)
    dome = ring(c, cx - 0.05, cz + 0.05, rx + 0.06, rz + 0.08, 0.012, a)  # diaphragm
    t.specular += dome * (c.z < cz) * np.float32(2.5)
    vessel(c, t, ellipse(c, cx + 0.12, cz + rz * 0.35, 0.04, 0.02, a) * organ)  # hilum
    if variant == "lesion":
        r = rng.uniform(0.03, 0.07)
        m = ellipse(c, cx + rng.uniform(-0.5, 0.3) * rx, cz - rng.uniform(0, 0.3) * rz, r, r)
        paint(t.echo, m * organ, 0.3)
    return t


def pancreas(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = abdomen(c, rng, 0.45)
    paint(t.echo, layer(c.z, wall, curve(c, rng, 0.28, 0.05), 0.01) * (c.x < 0.2), 1.0)  # liver
    z0 = rng.uniform(0.36, 0.44)
    xs = np.linspace(-0.45, 0.45, 5)
    pts = np.stack([xs, z0 + 0.06 * np.cos(xs * 3) + rng.uniform(-0.02, 0.02, 5)], 1)
    r = rng.uniform(0.045, 0.065)
    gland = tube(c, pts, np.array([1.3, 1.1, 1.0, 0.8]) * r, 0.01)
    paint(t.echo, gland, 1.7 * tex(c.shape, rng, (50, 50), 0.3))
    sv = tube(c, pts + [0.0, r + 0.025], 0.017)  # splenic vein behind the gland
    vessel(c, t, sv)
    sma = (rng.uniform(-0.08, 0.08), z0 + r + 0.09)
    paint(t.echo, ellipse(c, *sma, 0.035, 0.035), 2.0)  # fat collar
    vessel(c, t, ellipse(c, *sma, 0.016, 0.016))
    ar = rng.uniform(0.045, 0.06)
    ax, az = sma[0] + rng.uniform(-0.04, 0.04), sma[1] + 0.12
    vessel(c, t, ellipse(c, ax, az, ar, ar), ring(c, ax, az, ar + 0.008, ar + 0.008, 0.01))
    vessel(c, t, ellipse(c, ax - 0.2, az - 0.02, 0.07, 0.04, 0.2))  # IVC
    stone(c, t, ax, az + 0.2, 0.16, 0.05)  # vertebral body
    if rng.random() < 0.5:  # bowel gas: bright surface, dirty shadow with reverberation
        gx, gz = rng.uniform(-0.5, 0.5), wall + rng.uniform(0.05, 0.12)
        gas = blob(c, gx, gz, 0.1, 0.03, outline(rng, 0.2), 0.0)
        t.specular += gas * (c.z < gz) * np.float32(3.0)
        paint(t.atten, gas, 1500.0)
        below = layer(c.x, gx - 0.08, gx + 0.08, 0.02) * layer(c.z, gz, 9.0, 0.02)
        t.artifact = below * np.exp((gz - c.z) * np.float32(6.0)) * np.float32(0.3)
    if variant == "mass":
        m = blob(c, pts[1][0], pts[1][1], 0.06, 0.05, outline(rng, 0.15))
        paint(t.echo, m, 0.35)
    elif variant == "duct":
        vessel(c, t, tube(c, pts, 0.008) * gland)
    return t


register_phantom(
    PhantomFamily(
        "liver",
        liver,
        ("convex",),
        {"normal": 0.5, "cyst": 0.15, "hemangioma": 0.15, "metastasis": 0.1, "steatosis": 0.1},
    )
)
register_phantom(
    PhantomFamily(
        "gallbladder",
        gallbladder,
        ("convex",),
        {"normal": 0.4, "stone": 0.25, "polyp": 0.15, "tumour": 0.1, "sludge": 0.1},
    )
)
register_phantom(
    PhantomFamily(
        "kidney",
        kidney,
        ("convex",),
        {"normal": 0.55, "cyst": 0.15, "stone": 0.15, "hydronephrosis": 0.15},
    )
)
register_phantom(
    PhantomFamily(
        "spleen", spleen, ("convex",), {"normal": 0.7, "splenomegaly": 0.15, "lesion": 0.15}
    )
)
register_phantom(
    PhantomFamily("pancreas", pancreas, ("convex",), {"normal": 0.75, "mass": 0.15, "duct": 0.1})
)
