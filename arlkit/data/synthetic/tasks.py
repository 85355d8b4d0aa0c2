"""Downstream tasks of the synthetic corpus, mirroring the reference paper's evaluations.

Each class of a task is a set of phantom variants: e.g. breast ``benign`` draws a cyst
or a fibroadenoma (circumscribed, oval, wider-than-tall, posterior enhancement) and
``malignant`` an irregular, spiculated, taller-than-wide, shadowing mass that may hold
microcalcifications. ``cardiac_seg`` has no image label; its samples carry the
left-ventricle mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from arlkit.data.synthetic.phantoms.cardiac import VIEWS
from arlkit.errors import ConfigError, closest

__all__ = ["TASKS", "TaskSpec", "get_task"]


@dataclass(frozen=True)
class TaskSpec:
    """One labelled task.

    Attributes:
        name: task name (``--data synthetic:<name>``).
        organ: the organ every sample shows.
        classes: class names by label index (mask classes for segmentation tasks).
        variants: per class, the phantom variants it is drawn from (uniformly).
        segmentation: samples carry ``"mask"`` and ``label = -1``.
    """

    name: str
    organ: str
    classes: tuple[str, ...]
    variants: tuple[tuple[str, ...], ...]
    segmentation: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, variant: str) -> int:
        """Class index of a phantom variant, or -1 when no class includes it."""
        if self.segmentation:
            return -1
        for k, group in enumerate(self.variants):
            if variant in group:
                return k
        return -1


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "breast", "breast", ("benign", "malignant"), (("cyst", "fibroadenoma"), ("malignant",))
        ),
        TaskSpec(
            "thyroid",
            "thyroid",
            ("benign", "malignant"),
            (("spongiform", "colloid_cyst", "benign"), ("malignant",)),
        ),
        TaskSpec(
            "gallbladder",
            "gallbladder",
            ("normal", "tumour_polyp"),
            (("normal",), ("polyp", "tumour")),
        ),
        TaskSpec(
            "lung",
            "lung",
            ("normal", "pathological"),
            (("a_lines",), ("b_lines", "consolidation", "effusion")),
        ),
        TaskSpec("cardiac_view", "cardiac", VIEWS, tuple((v,) for v in VIEWS)),
        TaskSpec("cardiac_seg", "cardiac", ("background", "lv"), (VIEWS,), segmentation=True),
    )
}


def get_task(name: str) -> TaskSpec:
    """The task called ``name``.

    Raises:
        ConfigError: unknown task; the message lists the known ones.
    """
    try:
        return TASKS[name]
    except KeyError:
        hint = closest(name, TASKS)
        raise ConfigError(
            f"synthetic data: unknown task {name!r}"
            + (f"; did you mean {hint!r}?" if hint else "")
            + f" (known: {', '.join(TASKS)})"
        ) from None
