"""Superficial organs scanned with a linear array: breast, thyroid, carotid, MSK, testis.

Breast and thyroid carry *local* findings whose appearance encodes the task label:
benign-like nodules are circumscribed, oval and wider-than-tall (often with posterior
enhancement or a thin halo); malignant-like ones are irregular or spiculated,
taller-than-wide, markedly hypoechoic, shadowing and may hold microcalcifications
(BI-RADS / TI-RADS features).
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.phantoms import PhantomFamily, register_phantom
from arlkit.data.synthetic.phantoms.common import (
    FAT,
    FLUID,
    MUSCLE,
    body_wall,
    calcifications,
    cyst,
    new_tissue,
    stone,
    striations,
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
    tube,
)
from arlkit.data.synthetic.shapes import texture as tex

__all__ = ["breast", "carotid", "musculoskeletal", "nodule", "testis", "thyroid"]

PLAQUE_ATT = 40.0  # fibrous plaque: slightly more attenuating than soft tissue


def nodule(
    c: Coords, t: Tissue, rng: np.random.Generator, kind: str, cx: float, cz: float, size: float
) -> np.ndarray:
    """A breast or thyroid nodule of ``kind``; returns its mask.

    Kinds: ``cyst`` (anechoic, enhancement), ``benign`` (oval, wider-than-tall,
    circumscribed, hypoechoic, mild enhancement, thin capsule), ``spongiform``
    (iso-echoic with tiny cysts and a thin halo), ``malignant`` (irregular/spiculated,
    taller-than-wide, markedly hypoechoic, shadowing, echogenic halo, microcalcifications).
    """
    angle = rng.uniform(-0.25, 0.25)
    if kind == "malignant":
        rx, rz = size * rng.uniform(0.7, 0.95), size * rng.uniform(1.05, 1.4)
        edge = rng.uniform(0.008, 0.015)  # indistinct margin
        shape = outline(rng, rng.uniform(0.08, 0.16), rng.uniform(0.04, 0.09))
        m = blob(c, cx, cz, rx, rz, shape, angle, edge)
        halo = blob(c, cx, cz, rx + 0.012, rz + 0.012, shape, angle, edge) - m
        paint(t.echo, np.clip(halo, 0, 1) * rng.uniform(0.3, 0.8), 1.6)
        paint(t.echo, m, rng.uniform(0.06, 0.18) * tex(c.shape, rng, (20, 20), 0.3))
        paint(t.atten, m, rng.uniform(100.0, 180.0))
        if rng.random() < 0.6:
            n = int(rng.integers(3, 10))
            calcifications(c, t, rng, cx, cz, rx, rz, n)
        return m
    rx, rz = size * rng.uniform(1.05, 1.35), size * rng.uniform(0.55, 0.8)
    shape = outline(rng, rng.uniform(0.0, 0.04))
    m = blob(c, cx, cz, rx, rz, shape, angle, 0.004)
    if kind == "cyst":
        paint(t.echo, m, FLUID)
        paint(t.atten, m, 2.0)
    elif kind == "spongiform":
        paint(t.echo, m, rng.uniform(0.9, 1.3))
        for _ in range(int(rng.integers(6, 14))):
            r = rng.uniform(0.008, 0.02)
            px, pz = cx + rng.uniform(-0.7, 0.7) * rx, cz + rng.uniform(-0.6, 0.6) * rz
            paint(t.echo, ellipse(c, px, pz, r, r * 0.8) * m, FLUID)
        paint(t.atten, m, 15.0)
        halo = ring(c, cx, cz, rx + 0.01, rz + 0.01, 0.012, angle)
        paint(t.echo, halo, 0.25)
    else:  # benign solid: fibroadenoma / follicular adenoma
        paint(t.echo, m, rng.uniform(0.25, 0.5) * tex(c.shape, rng, (16, 16), 0.15))
        paint(t.atten, m, rng.uniform(8.0, 18.0))
    t.specular += ring(c, cx, cz, rx, rz, 0.006, angle) * np.float32(rng.uniform(0.3, 0.8))
    return m


def breast(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, FAT, (10, 8), 0.35)
    body_wall(c, t, rng, 0.03)
    top = curve(c, rng, rng.uniform(0.14, 0.26), 0.05, 1.5)
    bottom = curve(c, rng, rng.uniform(0.5, 0.62), 0.05, 1.5)
    fibro = layer(c.z, top, bottom, 0.02) * tex(c.shape, rng, (24, 16), 0.45)
    paint(t.echo, np.clip(fibro, 0, 1), 1.5 * tex(c.shape, rng, (30, 24), 0.3))
    for _ in range(int(rng.integers(3, 7))):  # Cooper's ligaments: thin bright arcs
        px, pz = rng.uniform(-0.5, 0.5), rng.uniform(0.08, 0.2)
        arc = ring(c, px, pz + 0.1, rng.uniform(0.08, 0.15), 0.1, 0.006)
        t.specular += arc * (c.z < pz + 0.08) * np.float32(0.5)
    pec_top = curve(c, rng, rng.uniform(0.7, 0.78), 0.03, 1.0)
    pec = layer(c.z, pec_top, pec_top + rng.uniform(0.1, 0.15), 0.008)
    paint(t.echo, pec, MUSCLE * (0.5 + 1.5 * striations(c, rng, 0.03, rng.uniform(-0.4, 0.4))))
    if rng.random() < 0.6:
        stone(c, t, rng.uniform(-0.3, 0.3), rng.uniform(0.92, 0.97), 0.09, 0.03)  # rib
    if variant != "normal":
        kind = {"fibroadenoma": "benign"}.get(variant, variant)
        size = rng.uniform(0.06, 0.11)
        cx, cz = rng.uniform(-0.22, 0.22), rng.uniform(0.3, 0.48)
        nodule(c, t, rng, kind, cx, cz, size)
    return t


def thyroid(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, 0.5, (10, 10), 0.25)
    wall = body_wall(c, t, rng, rng.uniform(0.03, 0.05))
    side = rng.choice([-1.0, 1.0])  # which lobe is imaged (trachea on the other side)
    strap = layer(c.d, wall, wall + rng.uniform(0.06, 0.1), 0.008)
    paint(t.echo, strap, MUSCLE * (0.5 + striations(c, rng, 0.03)))
    lx, lz = side * rng.uniform(0.02, 0.1), rng.uniform(0.36, 0.44)
    lrx, lrz = rng.uniform(0.24, 0.3), rng.uniform(0.15, 0.2)
    lobe = ellipse(c, lx, lz, lrx, lrz, rng.uniform(-0.15, 0.15), 0.01)
    isthmus = layer(c.z, lz - lrz, lz - lrz + 0.05, 0.01) * (side * c.x < 0)
    gland = np.clip(lobe + isthmus, 0, 1)
    paint(t.echo, gland, 1.35 * tex(c.shape, rng, (40, 40), 0.12))
    tx, tz = -side * rng.uniform(0.5, 0.58), lz - 0.05  # trachea: air ring, reverberations
    trachea = ellipse(c, tx, tz, 0.12, 0.1)
    t.specular += ring(c, tx, tz, 0.12, 0.1, 0.01) * (c.z < tz) * np.float32(3.0)
    paint(t.atten, trachea * (c.z > tz - 0.08), 4000.0)
    echoes = sum(ring(c, tx, tz + k * 0.09, 0.12, 0.1, 0.01) for k in (1, 2))
    t.reverb = echoes * (c.z < tz + 0.2) * np.float32(0.5)
    ax, az, ar = (
        side * rng.uniform(0.36, 0.44),
        lz + rng.uniform(0.0, 0.08),
        rng.uniform(0.06, 0.08),
    )
    vessel(c, t, ellipse(c, ax, az, ar, ar), ring(c, ax, az, ar + 0.008, ar + 0.008, 0.01))
    jr = rng.uniform(0.03, 0.06)
    vessel(c, t, ellipse(c, ax + side * 0.08, az - ar, ar * 1.2, jr, 0.3))
    paint(t.echo, ellipse(c, side * 0.1, 0.78, 0.2, 0.07), MUSCLE)  # longus colli
    stone(c, t, side * rng.uniform(0.0, 0.2), rng.uniform(0.88, 0.93), 0.2, 0.05)  # vertebra
    if variant != "normal":
        kind = {"colloid_cyst": "cyst"}.get(variant, variant)
        size = rng.uniform(0.06, 0.1)
        cx = lx + rng.uniform(-0.35, 0.35) * lrx
        cz = lz + rng.uniform(-0.15, 0.2) * lrz
        nodule(c, t, rng, kind, cx, cz, size)
        if kind == "cyst":  # comet-tail artefacts from inspissated colloid
            for _ in range(int(rng.integers(1, 4))):
                px, pz = cx + rng.uniform(-0.5, 0.5) * size, cz + rng.uniform(-0.3, 0.3) * size
                tail = layer(c.x, px - 0.006, px + 0.006, 0.004) * layer(c.z, pz, pz + 0.05, 0.01)
                t.reverb = tail * np.float32(2.0) + (0 if t.reverb is None else t.reverb)
    return t


def carotid(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, 0.6, (10, 10), 0.3)
    wall = body_wall(c, t, rng, rng.uniform(0.03, 0.05))
    scm = layer(c.d, wall, wall + rng.uniform(0.12, 0.18), 0.01)
    paint(t.echo, scm, MUSCLE * (0.5 + 1.2 * striations(c, rng, 0.025, rng.uniform(-0.1, 0.1))))
    cz, r = rng.uniform(0.45, 0.55), rng.uniform(0.07, 0.1)
    tilt = rng.uniform(-0.1, 0.1)
    if rng.random() < 0.7:  # longitudinal
        pts = np.array([[-0.8, cz - tilt], [0.8, cz + tilt]])
        lumen = tube(c, pts, r)
        walls = tube(c, pts, r + 0.012) - lumen
        jug = tube(c, pts + [0.0, -r - rng.uniform(0.05, 0.08)], rng.uniform(0.02, 0.05))
        px = rng.uniform(-0.3, 0.3)
        pz = cz + tilt * px / 0.8
    else:  # transverse
        lumen = ellipse(c, 0.0, cz, r, r)
        walls = ring(c, 0.0, cz, r + 0.012, r + 0.012, 0.014)
        jug = ellipse(c, rng.uniform(-0.2, 0.2), cz - r - 0.06, 0.1, rng.uniform(0.02, 0.05))
        px, pz = 0.0, cz
    vessel(c, t, jug)
    vessel(c, t, lumen, np.clip(walls, 0, 1), 1.5)
    paint(t.echo, np.clip(walls, 0, 1), 1.2)
    stone(c, t, rng.uniform(-0.4, 0.4), rng.uniform(0.85, 0.92), 0.12, 0.04)  # transverse process
    if variant == "plaque":
        side = rng.choice([-1.0, 1.0])
        pr = rng.uniform(0.3, 0.6) * r
        ppx, ppz = px + rng.uniform(-0.1, 0.1), pz + side * (r - pr * 0.4)
        plaque = blob(c, ppx, ppz, pr * 2.2, pr, outline(rng, 0.1), 0.0)
        paint(t.echo, plaque, rng.uniform(0.8, 1.8))
        paint(t.atten, plaque, PLAQUE_ATT)
        if rng.random() < 0.5:  # calcified: bright surface and shadow
            stone(c, t, ppx, ppz, pr * 1.2, pr * 0.5)
    return t


def musculoskeletal(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, MUSCLE, (10, 10), 0.2)
    wall = body_wall(c, t, rng, rng.uniform(0.04, 0.08))
    bone_z = curve(c, rng, rng.uniform(0.65, 0.82), 0.06, 0.8)
    if variant in ("tendon", "tear"):
        top = curve(c, rng, wall + rng.uniform(0.05, 0.12), 0.03, 1.0)
        bot = top + rng.uniform(0.15, 0.25)
        band = layer(c.z, top, bot, 0.006)
        fibrils = 0.35 + 1.6 * striations(
            c, rng, rng.uniform(0.012, 0.02), rng.uniform(-0.08, 0.08), 6
        )
        paint(t.echo, band, fibrils)
        t.specular += band * striations(c, rng, 0.03, 0.0, 12) * np.float32(0.4)
        if variant == "tear":
            g = blob(
                c, rng.uniform(-0.2, 0.2), float(np.mean(top)) + 0.1, 0.08, 0.08, outline(rng, 0.15)
            )
            paint(t.echo, g * band, 0.12)
            paint(t.atten, g * band, 5.0)
    else:  # muscle belly with pennate septa
        tilt = rng.uniform(0.2, 0.5) * rng.choice([-1, 1])
        paint(
            t.echo,
            layer(c.z, wall, bone_z, 0.01),
            MUSCLE * (0.4 + 2.0 * striations(c, rng, 0.05, tilt, 10)),
        )
    if variant == "effusion":
        pool = blob(
            c, rng.uniform(-0.2, 0.2), float(np.mean(bone_z)) - 0.06, 0.25, 0.05, outline(rng, 0.1)
        )
        paint(t.echo, pool, FLUID)
        paint(t.atten, pool, 2.0)
    cortex = layer(c.z, bone_z, bone_z + 0.012, 0.004)
    t.specular += cortex * np.float32(5.0)
    paint(t.atten, layer(c.z, bone_z + 0.006, 9.0), 4000.0)
    return t


def testis(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, 0.35, (10, 10), 0.3)
    body_wall(c, t, rng, rng.uniform(0.04, 0.07))
    cx, cz = rng.uniform(-0.05, 0.05), rng.uniform(0.45, 0.55)
    rx, rz, a = rng.uniform(0.33, 0.42), rng.uniform(0.22, 0.28), rng.uniform(-0.2, 0.2)
    if variant == "hydrocele":
        cyst(c, t, cx, cz, rx + 0.08, rz + 0.08, a)
    gland = ellipse(c, cx, cz, rx, rz, a, 0.008)
    paint(t.echo, gland, 1.0 * tex(c.shape, rng, (40, 40), 0.1))
    paint(t.atten, gland, 25.0)
    t.specular += ring(c, cx, cz, rx, rz, 0.008, a) * np.float32(1.2)  # tunica
    med = ellipse(c, cx + 0.1, cz + rz * 0.55, rx * 0.5, 0.012, a)
    paint(t.echo, med, 2.2)  # mediastinum testis
    side = rng.choice([-1.0, 1.0])
    paint(t.echo, ellipse(c, cx + side * rx * 0.95, cz - rz * 0.6, 0.09, 0.07), 1.2)
    if variant == "microlithiasis":
        calcifications(c, t, rng, cx, cz, rx, rz, int(rng.integers(12, 25)), 0.005)
    elif variant == "mass":
        m = blob(
            c,
            cx + rng.uniform(-0.5, 0.5) * rx,
            cz + rng.uniform(-0.3, 0.3) * rz,
            rng.uniform(0.05, 0.1),
            rng.uniform(0.05, 0.09),
            outline(rng, 0.1),
        )
        paint(t.echo, m * gland, rng.uniform(0.15, 0.4))
    return t


register_phantom(
    PhantomFamily(
        "breast",
        breast,
        ("linear",),
        {"normal": 0.4, "cyst": 0.15, "fibroadenoma": 0.15, "malignant": 0.3},
    )
)
register_phantom(
    PhantomFamily(
        "thyroid",
        thyroid,
        ("linear",),
        {"normal": 0.4, "spongiform": 0.1, "colloid_cyst": 0.1, "benign": 0.1, "malignant": 0.3},
    )
)
register_phantom(PhantomFamily("carotid", carotid, ("linear",), {"normal": 0.6, "plaque": 0.4}))
register_phantom(
    PhantomFamily(
        "musculoskeletal",
        musculoskeletal,
        ("linear",),
        {"tendon": 0.4, "muscle": 0.35, "tear": 0.15, "effusion": 0.1},
    )
)
register_phantom(
    PhantomFamily(
        "testis",
        testis,
        ("linear",),
        {"normal": 0.6, "hydrocele": 0.15, "microlithiasis": 0.1, "mass": 0.15},
    )
)
