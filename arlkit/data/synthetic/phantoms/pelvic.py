"""Pelvic and obstetric organs (convex array): bladder, uterus/ovaries, prostate, fetus.

The fetal family is a *global* structure: the skull ellipse with its midline echo and
thalami (head), the abdominal circumference with stomach and spine, or a femur.
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.phantoms import PhantomFamily, register_phantom
from arlkit.data.synthetic.phantoms.common import (
    FLUID,
    FLUID_ATT,
    body_wall,
    calcifications,
    cyst,
    new_tissue,
    stone,
)
from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import Coords, blob, ellipse, layer, outline, paint, ring, tube
from arlkit.data.synthetic.shapes import texture as tex

__all__ = ["bladder", "fetal", "prostate", "urinary_bladder", "uterus_ovary"]


def urinary_bladder(
    c: Coords, t: Tissue, rng: np.random.Generator, cx: float, cz: float, rx: float, rz: float
) -> np.ndarray:
    """A filled bladder: anechoic, thin bright wall, strong posterior enhancement."""
    shape = outline(rng, 0.05)
    a = rng.uniform(-0.15, 0.15)
    outer = blob(c, cx, cz, rx + 0.015, rz + 0.015, shape, a, 0.006)
    lumen = blob(c, cx, cz, rx, rz, shape, a, 0.006)
    paint(t.echo, outer, 1.4)
    t.specular += np.clip(outer - lumen, 0, 1) * np.float32(0.6)
    paint(t.echo, lumen, FLUID)
    paint(t.atten, lumen, FLUID_ATT)
    return lumen


def pelvis(c: Coords, rng: np.random.Generator) -> tuple[Tissue, float]:
    t = new_tissue(c, rng, 0.5, (10, 10), 0.5)  # bowel loops and pelvic fat
    wall = body_wall(c, t, rng, rng.uniform(0.04, 0.08), rng.uniform(0.03, 0.05))
    return t, wall


def bladder(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = pelvis(c, rng)
    cx, cz = rng.uniform(-0.08, 0.08), rng.uniform(0.38, 0.45)
    rx, rz = rng.uniform(0.3, 0.4), rng.uniform(0.18, 0.26)
    lumen = urinary_bladder(c, t, rng, cx, cz, rx, rz)
    paint(t.echo, ellipse(c, cx, cz + rz + 0.15, 0.2, 0.09), 0.9)  # uterus or prostate behind
    paint(t.echo, ring(c, cx + 0.05, cz + rz + 0.3, 0.07, 0.06, 0.02), 1.8)  # rectum wall
    if variant == "stone":
        s = rng.uniform(0.02, 0.04)
        stone(c, t, cx + rng.uniform(-0.5, 0.5) * rx, cz + rz - s, s, s * 0.8)
    elif variant == "wall_mass":
        px = cx + rng.uniform(-0.5, 0.5) * rx
        m = blob(c, px, cz + rz * 0.92, rng.uniform(0.04, 0.08), 0.04, outline(rng, 0.2, 0.05))
        paint(t.echo, m, 1.0)
    elif variant == "debris":
        paint(t.echo, lumen * layer(c.z, cz + rz * rng.uniform(0.5, 0.8), 9.0, 0.01), 0.3)
    return t


def uterus_ovary(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = pelvis(c, rng)
    urinary_bladder(
        c,
        t,
        rng,
        rng.uniform(-0.3, 0.0),
        wall + rng.uniform(0.12, 0.18),
        rng.uniform(0.18, 0.3),
        0.1,
    )
    ux, uz, a = rng.uniform(-0.05, 0.15), rng.uniform(0.5, 0.58), rng.uniform(-0.5, -0.1)
    urx, urz = rng.uniform(0.28, 0.36), rng.uniform(0.13, 0.17)
    uterus = ellipse(c, ux, uz, urx, urz, a, 0.01)
    paint(t.echo, uterus, 1.1 * tex(c.shape, rng, (30, 30), 0.15))
    t.specular += ring(c, ux, uz, urx, urz, 0.008, a) * np.float32(0.5)  # serosa
    stripe = ellipse(c, ux - 0.03, uz, urx * 0.75, rng.uniform(0.025, 0.05), a, 0.006)
    paint(t.echo, stripe, 2.4)  # endometrium
    paint(t.echo, ellipse(c, ux - 0.03, uz, urx * 0.7, 0.006, a, 0.004), 0.4)  # cavity line
    for _ in range(int(rng.integers(0, 3))):  # ovaries with follicles
        ox, oz = rng.choice([-0.45, 0.5]) + rng.uniform(-0.05, 0.05), rng.uniform(0.55, 0.8)
        paint(t.echo, ellipse(c, ox, oz, 0.09, 0.06, rng.uniform(-0.5, 0.5)), 0.8)
        for _ in range(int(rng.integers(3, 8))):
            r = rng.uniform(0.008, 0.02)
            cyst(c, t, ox + rng.uniform(-0.06, 0.06), oz + rng.uniform(-0.035, 0.035), r, r)
    if variant == "fibroid":
        r = rng.uniform(0.05, 0.09)
        fx, fz = ux + rng.uniform(-0.4, 0.4) * urx, uz + rng.uniform(-0.5, 0.5) * urz
        f = ellipse(c, fx, fz, r, r * 0.9, edge=0.01)
        paint(t.echo, f, 0.45 * tex(c.shape, rng, (40, 40), 0.3))
        paint(t.atten, f, 90.0)  # fan-shaped shadowing
    elif variant == "ovarian_cyst":
        r = rng.uniform(0.08, 0.14)
        cyst(c, t, rng.choice([-0.4, 0.4]), rng.uniform(0.55, 0.75), r, r * 0.85)
    return t


def prostate(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t, wall = pelvis(c, rng)
    bph = variant == "bph"
    px, pz = rng.uniform(-0.05, 0.05), rng.uniform(0.62, 0.68)
    rx, rz = (
        rng.uniform(0.17, 0.23) * (1.3 if bph else 1),
        rng.uniform(0.13, 0.16) * (1.3 if bph else 1),
    )
    urinary_bladder(c, t, rng, px, pz - rz - 0.2, 0.33, 0.16)
    gland = ellipse(c, px, pz, rx, rz, rng.uniform(-0.1, 0.1), 0.01)
    paint(t.echo, gland, 1.3 * tex(c.shape, rng, (40, 40), 0.12))  # peripheral zone
    tz_scale = 0.75 if bph else 0.55
    central = ellipse(c, px, pz - rz * 0.2, rx * tz_scale, rz * tz_scale, 0.0, 0.015)
    paint(t.echo, central, 0.75 * tex(c.shape, rng, (25, 25), 0.45))
    t.specular += ring(c, px, pz, rx, rz, 0.008) * np.float32(1.0)
    if rng.random() < 0.4:
        calcifications(c, t, rng, px, pz - rz * 0.3, rx * 0.3, rz * 0.2, 3, 0.008, shadow=True)
    paint(t.echo, ring(c, px, pz + rz + 0.1, 0.12, 0.06, 0.02), 1.8)  # rectal wall
    if variant == "lesion":
        side = rng.choice([-1.0, 1.0])
        m = blob(c, px + side * rx * 0.65, pz + rz * 0.35, 0.05, 0.04, outline(rng, 0.15))
        paint(t.echo, m * gland, 0.3)
    return t


def fetal(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, FLUID, (8, 8), 0.1)
    t.atten[...] = FLUID_ATT
    wall = body_wall(c, t, rng, rng.uniform(0.04, 0.08), rng.uniform(0.02, 0.04))
    uterine = layer(c.d, wall, wall + rng.uniform(0.05, 0.08), 0.01)
    paint(t.echo, uterine, 0.9)
    paint(t.atten, uterine, 30.0)
    back = layer(c.d, rng.uniform(0.8, 0.92), 9.0, 0.02)  # posterior uterine wall and beyond
    paint(t.echo, back, 0.9 * tex(c.shape, rng, (20, 10), 0.3))
    paint(t.atten, back, 30.0)
    if rng.random() < 0.5:  # placenta on the anterior or posterior wall
        z0 = wall + 0.06 if rng.random() < 0.5 else 0.82
        pl = layer(c.d, z0, z0 + rng.uniform(0.08, 0.14), 0.015)
        paint(t.echo, pl, 1.3 * tex(c.shape, rng, (30, 20), 0.25))
        paint(t.atten, pl, 30.0)
    cx, cz = rng.uniform(-0.12, 0.12), rng.uniform(0.5, 0.6)
    if variant == "head":
        rx, rz, a = rng.uniform(0.25, 0.32), rng.uniform(0.19, 0.25), rng.uniform(-0.5, 0.5)
        brain = ellipse(c, cx, cz, rx, rz, a, 0.008)
        paint(t.echo, brain, 0.45 * tex(c.shape, rng, (20, 20), 0.3))
        paint(t.atten, brain, 15.0)
        skull = ring(c, cx, cz, rx + 0.02, rz + 0.02, 0.022, a, 0.006)
        t.specular += skull * np.float32(3.0)
        paint(t.echo, skull, 2.5)
        paint(t.atten, skull, 150.0)
        ca, sa = np.cos(a), np.sin(a)
        falx = tube(
            c, np.array([[cx - rx * ca, cz - rx * sa], [cx + rx * ca, cz + rx * sa]]), 0.005
        )
        t.specular += falx * brain * np.float32(1.2)
        for side in (-1.0, 1.0):  # thalami beside the midline
            tx, tz = cx + 0.05 * ca - side * 0.05 * sa, cz + 0.05 * sa + side * 0.05 * ca
            paint(t.echo, ellipse(c, tx, tz, 0.05, 0.035, a, 0.01), 0.15)
        csp = (cx - 0.12 * ca, cz - 0.12 * sa)
        paint(t.echo, ellipse(c, *csp, 0.025, 0.012, a), FLUID)  # cavum septi pellucidi
    elif variant == "abdomen":
        r = rng.uniform(0.2, 0.26)
        body = ellipse(c, cx, cz, r, r * rng.uniform(0.9, 1.0), 0.0, 0.008)
        paint(t.echo, body, 1.1 * tex(c.shape, rng, (30, 30), 0.15))
        paint(t.atten, body, 30.0)
        t.specular += ring(c, cx, cz, r, r, 0.008) * np.float32(1.0)
        a = rng.uniform(0, 2 * np.pi)
        paint(
            t.echo,
            ellipse(c, cx + 0.4 * r * np.cos(a), cz + 0.4 * r * np.sin(a), 0.06, 0.04, a),
            FLUID,
        )
        for k in range(3):  # spine ossification centres, opposite the stomach
            sx = cx - 0.7 * r * np.cos(a) + 0.03 * np.cos(a + np.pi / 2 + k * 2.1)
            sz = cz - 0.7 * r * np.sin(a) + 0.03 * np.sin(a + np.pi / 2 + k * 2.1)
            stone(c, t, sx, sz, 0.012, 0.012)
        uv = tube(
            c,
            np.array([[cx, cz], [cx + 0.5 * r * np.cos(a + 1), cz + 0.5 * r * np.sin(a + 1)]]),
            0.012,
        )
        paint(t.echo, uv, FLUID)
    else:  # femur in its soft-tissue sleeve
        a = rng.uniform(-0.35, 0.35)
        length = rng.uniform(0.22, 0.3)
        ca, sa = np.cos(a), np.sin(a)
        ends = np.array(
            [[cx - length * ca, cz - length * sa], [cx + length * ca, cz + length * sa]]
        )
        paint(t.echo, tube(c, ends + [[-0.05, 0.0], [0.05, 0.0]], 0.08, 0.02), 1.0)
        paint(t.atten, tube(c, ends, 0.07), 30.0)
        bone = tube(c, ends, 0.013, 0.004)
        t.specular += bone * (c.z < cz + (c.x - cx) * np.float32(np.tan(a))) * np.float32(5.0)
        paint(t.echo, bone, 2.0)
        paint(t.atten, bone, 4000.0)
    for _ in range(int(rng.integers(1, 4))):  # limbs and cord loops floating in the fluid
        lx, lz = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.9)
        limb = ellipse(
            c, lx, lz, rng.uniform(0.03, 0.08), rng.uniform(0.02, 0.04), rng.uniform(-1, 1)
        )
        paint(t.echo, limb * (t.echo < 0.1), 0.8)
    return t


register_phantom(
    PhantomFamily(
        "bladder",
        bladder,
        ("convex",),
        {"normal": 0.7, "stone": 0.1, "wall_mass": 0.1, "debris": 0.1},
    )
)
register_phantom(
    PhantomFamily(
        "uterus_ovary",
        uterus_ovary,
        ("convex",),
        {"normal": 0.6, "fibroid": 0.2, "ovarian_cyst": 0.2},
    )
)
register_phantom(
    PhantomFamily("prostate", prostate, ("convex",), {"normal": 0.6, "bph": 0.2, "lesion": 0.2})
)
register_phantom(
    PhantomFamily("fetal", fetal, ("convex",), {"head": 0.5, "abdomen": 0.25, "femur": 0.25})
)
