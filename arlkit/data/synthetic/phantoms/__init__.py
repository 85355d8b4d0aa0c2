"""One phantom family per organ class: tissue maps with random anatomy and findings.

A family renders acoustic maps (:class:`~arlkit.data.synthetic.physics.Tissue`) for
one *variant* — a finding (``"cyst"``, ``"malignant"``, ...) or a standard view
(``"a4c"``) — at the phantom sample positions of a beam grid. Families differ in where
their information is: cardiac views, the fetal head and the lung pleura are *global*
structures, while breast and thyroid nodules or gallbladder polyps are *local* findings
in otherwise normal tissue.

Extend the corpus to a new organ with :func:`register_phantom`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from arlkit.data.synthetic.physics import Tissue
from arlkit.data.synthetic.shapes import Coords
from arlkit.errors import ConfigError

__all__ = ["PHANTOMS", "PhantomFamily", "all_phantoms", "get_phantom", "register_phantom"]

RenderFn = Callable[[Coords, np.random.Generator, str], Tissue]


@dataclass(frozen=True)
class PhantomFamily:
    """How to draw one organ.

    Attributes:
        organ: taxonomy class name.
        render: ``(coords, rng, variant) -> Tissue``.
        probes: probes this organ is typically scanned with.
        variants: variant name → probability in the pretraining corpus.
    """

    organ: str
    render: RenderFn
    probes: tuple[str, ...]
    variants: dict[str, float] = field(default_factory=lambda: {"normal": 1.0})

    def draw_variant(self, rng: np.random.Generator) -> str:
        names = list(self.variants)
        p = np.array([self.variants[n] for n in names], np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]


PHANTOMS: dict[str, PhantomFamily] = {}


def register_phantom(family: PhantomFamily, *, replace: bool = False) -> PhantomFamily:
    """Add a phantom family (e.g. for an organ of a custom taxonomy).

    Raises:
        ConfigError: the organ already has a family and ``replace`` is False.
    """
    if family.organ in PHANTOMS and not replace:
        raise ConfigError(
            f"a phantom family for organ {family.organ!r} is already registered; "
            "pass replace=True to override it"
        )
    PHANTOMS[family.organ] = family
    return family


def get_phantom(organ: str) -> PhantomFamily:
    """The family of ``organ``.

    Raises:
        ConfigError: no family draws this organ; the message lists those that exist.
    """
    _load_builtin()
    try:
        return PHANTOMS[organ]
    except KeyError:
        raise ConfigError(
            f"synthetic data: no phantom family for organ {organ!r} "
            f"(available: {', '.join(sorted(PHANTOMS))}); choose organs from this list "
            "or register a family with arlkit.data.synthetic.phantoms.register_phantom"
        ) from None


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from arlkit.data.synthetic.phantoms import (  # noqa: F401  (modules register on import)
        abdominal,
        cardiac,
        chest,
        pelvic,
        superficial,
    )


def all_phantoms() -> dict[str, PhantomFamily]:
    """Every registered family by organ name (built-ins loaded first)."""
    _load_builtin()
    return dict(PHANTOMS)
