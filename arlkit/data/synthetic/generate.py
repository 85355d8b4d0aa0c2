"""One synthetic B-mode image from ``(organ, seed)``: phantom → physics → scan conversion.

:func:`render` is a pure function: the same arguments give the same image, bit for bit,
on a given platform. Its seed splits into independent streams for the acquisition
choices, the anatomy, the scanner settings and the speckle, so fixing the probe or the
variant does not change the rest of the image's randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arlkit.data.synthetic.geometry import PROBES, beam_grid
from arlkit.data.synthetic.phantoms import get_phantom
from arlkit.data.synthetic.physics import Scanner, simulate
from arlkit.data.synthetic.shapes import Coords
from arlkit.errors import ConfigError

__all__ = ["PROBE_NAMES", "SyntheticImage", "render"]

PROBE_NAMES: tuple[str, ...] = ("linear", "convex", "phased")


@dataclass
class SyntheticImage:
    """A rendered image and what produced it.

    Attributes:
        image: ``(S, S)`` float32 grey levels in [0, 1] (0 outside the field of view).
        fov: ``(S, S)`` bool field-of-view mask.
        labels: ``(S, S)`` int64 segmentation labels, or None when the phantom has none.
        organ, probe, variant: what was drawn.
        seed: the seed that reproduces it.
        stages: intermediate beam-domain arrays (only with ``stages=True``).
    """

    image: np.ndarray
    fov: np.ndarray
    labels: np.ndarray | None
    organ: str
    probe: str
    variant: str
    seed: int
    stages: dict[str, np.ndarray] | None = None


def render(
    organ: str,
    seed: int,
    size: int = 224,
    probe: str | None = None,
    variant: str | None = None,
    probes: tuple[str, ...] | None = None,
    stages: bool = False,
) -> SyntheticImage:
    """Render one image.

    Args:
        organ: organ with a phantom family (see :func:`~arlkit.data.synthetic.phantoms.all_phantoms`).
        seed: non-negative integer; determines everything not fixed by the other arguments.
        size: output side in pixels (>= 32).
        probe: ``"linear"``, ``"convex"`` or ``"phased"``; drawn from ``probes`` when None.
        variant: finding or view of the family; drawn from its corpus priors when None.
        probes: candidates for the probe (default: the organ's typical probes).
        stages: keep the intermediate arrays of the signal chain.

    Returns:
        The :class:`SyntheticImage`.

    Raises:
        ConfigError: unknown organ, probe or variant, or a size below 32.
    """
    if size < 32:
        raise ConfigError(f"synthetic data: size must be at least 32 pixels, got {size}")
    family = get_phantom(organ)
    pick, anatomy, settings, speckle = np.random.default_rng(seed).spawn(4)
    candidates = probes or family.probes
    drawn_probe = candidates[int(pick.integers(len(candidates)))]
    drawn_variant = family.draw_variant(pick)
    probe = probe or drawn_probe
    variant = variant or drawn_variant
    if probe not in PROBES:
        raise ConfigError(f"synthetic data: unknown probe {probe!r}; use one of {PROBE_NAMES}")
    if variant not in family.variants:
        raise ConfigError(
            f"synthetic data: organ {organ!r} has no variant {variant!r} "
            f"(known: {', '.join(family.variants)})"
        )
    grid = beam_grid(PROBES[probe], size)
    geo = grid.probe
    coords = Coords(
        grid.x, grid.z, grid.d, probe, geo.width, geo.radius, geo.angle, grid.xbin, grid.xlut
    )
    tissue = family.render(coords, anatomy, variant)
    out = simulate(tissue, grid, Scanner.random(settings), speckle, stages=stages)
    extra = {k: v for k, v in out.items() if k not in ("image", "fov", "labels")}
    return SyntheticImage(
        image=out["image"],
        fov=out["fov"],
        labels=out.get("labels"),
        organ=organ,
        probe=probe,
        variant=variant,
        seed=int(seed),
        stages=extra or None,
    )
