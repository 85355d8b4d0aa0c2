"""Lung ultrasound: ribs with shadows, the pleural line and its artefacts.

Below the pleura is air, so a normal lung shows no anatomy, only *A-lines*:
reverberations of the pleura at multiples of its depth. Pathology replaces them:
*B-lines* (vertical ring-down artefacts from the pleura to the bottom of the image),
*consolidation* (tissue-like lung with air bronchograms and a shredded deep border) or
*effusion* (an anechoic layer above compressed lung). All are global patterns tied to
the pleura, in beam-depth coordinates so they curve with a convex probe as they should.
"""

from __future__ import annotations

import numpy as np

from arlkit.data.synthetic.phantoms import PhantomFamily, register_phantom
from arlkit.data.synthetic.phantoms.common import BONE_ATT, FLUID, body_wall, new_tissue, rib
from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import Coords, blob, curve, ellipse, layer, outline, paint, thin
from arlkit.data.synthetic.shapes import texture as tex

__all__ = ["lung"]


def lung(c: Coords, rng: np.random.Generator, variant: str) -> Tissue:
    t = new_tissue(c, rng, 0.6, (12, 8), 0.3)
    body_wall(c, t, rng, rng.uniform(0.03, 0.05), rng.uniform(0.06, 0.1))
    pleura_d = rng.uniform(0.2, 0.3)
    pd = curve(c, rng, pleura_d, 0.008, 1.0)
    below = layer(c.d, pd + 0.006, 9.0, 0.004)
    xc, gap = rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.7)
    shadowed = np.zeros(c.shape[0], np.float32)  # per scan line: 1 under a rib
    for side in (-1.0, 1.0):
        rx, rz = rng.uniform(0.07, 0.1), rng.uniform(0.025, 0.035)
        bone = rib(c, t, xc + side * gap / 2, pleura_d - rz - rng.uniform(0.0, 0.02), rx, rz)
        np.maximum(shadowed, bone.max(axis=1), out=shadowed)
    open_lines = (1 - shadowed)[:, None]
    t.specular += thin(c.d, pd, 0.008) * np.float32(rng.uniform(1.5, 3.0))
    paint(t.echo, below, 0.03)
    haze = below * np.exp(-(c.d - pd) * np.float32(8.0)) * np.float32(0.15)
    paint(t.atten, below, BONE_ATT)  # air: nothing comes back from deeper
    p_line = c.d[:, :1] * 0 + pd[:, :1]  # pleural depth of each scan line, (L, 1)
    # reverberations between the probe and the pleura (not attenuated by the air)
    a_lines = np.zeros(c.shape, np.float32)
    amp = rng.uniform(0.5, 1.0)
    for k in range(2, 6):
        a_lines += thin(c.d, k * p_line, 0.008) * np.float32(amp)
        amp *= rng.uniform(0.5, 0.7)
    keep = open_lines.copy()
    x_line = c.x[:, :1]  # lateral position of each scan line near the skin
    if variant == "b_lines":
        artifact = np.zeros(c.shape, np.float32)
        for _ in range(int(rng.integers(3, 7))):
            xb = xc + rng.uniform(-0.45, 0.45) * gap
            profile = np.exp(-0.5 * ((x_line - xb) / rng.uniform(0.01, 0.025)) ** 2)
            artifact += below * profile * np.float32(rng.uniform(0.6, 1.2))
            keep *= 1 - profile
        haze = haze + artifact
    elif variant in ("consolidation", "effusion"):
        cx = xc + rng.uniform(-0.2, 0.2) * gap
        top = pleura_d + (rng.uniform(0.08, 0.2) if variant == "effusion" else 0.0)
        rx, rz = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.3)
        lobe = blob(c, cx, top + rz * 0.5, rx, rz, outline(rng, 0.1, 0.06), 0.0, 0.01) * below
        lobe = np.maximum(
            lobe, layer(c.d, pd, top + 0.02, 0.01) * ellipse(c, cx, top, rx, rz + 0.1)
        )
        if variant == "effusion":
            fluid = layer(c.d, pd + 0.006, top, 0.01) * ellipse(c, cx, top, rx * 1.3, rz + 0.2)
            paint(t.echo, fluid, FLUID)
            paint(t.atten, fluid, 2.0)
            lobe = lobe * (1 - fluid)
        paint(t.echo, lobe, 0.9 * tex(c.shape, rng, (30, 30), 0.3))
        paint(t.atten, lobe, 35.0)
        for _ in range(int(rng.integers(4, 10))):  # air bronchograms
            bx, bz = cx + rng.uniform(-0.6, 0.6) * rx, top + rng.uniform(0.2, 0.9) * rz
            dot = ellipse(c, bx, bz, rng.uniform(0.01, 0.03), 0.005, rng.uniform(-0.5, 0.5))
            t.specular += dot * lobe * np.float32(2.5)
        keep *= 1 - (lobe.max(axis=1, keepdims=True) > 0.5)
    t.reverb = a_lines * keep
    t.artifact = haze * open_lines  # sub-pleural haze and B-lines, not under the ribs
    return t


register_phantom(
    PhantomFamily(
        "lung",
        lung,
        ("linear", "convex"),
        {"a_lines": 0.5, "b_lines": 0.25, "consolidation": 0.15, "effusion": 0.1},
    )
)
