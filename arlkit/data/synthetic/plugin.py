"""Registers the synthetic corpus and its downstream tasks as ``datasets``.

``synthetic`` is the default pretraining data of every recipe; ``synthetic_task``
gives the labelled evaluation sets (``--data synthetic:breast`` and friends).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from arlkit.data.synthetic.dataset import SyntheticTask, SyntheticUltrasound
from arlkit.hookspecs import hookimpl
from arlkit.taxonomy import Taxonomy

__all__ = ["synthetic", "synthetic_task"]

Probe = Literal["linear", "convex", "phased"]
TaskName = Literal["breast", "thyroid", "gallbladder", "lung", "cardiac_view", "cardiac_seg"]


def synthetic(
    taxonomy: Taxonomy | None = None,
    size: Annotated[int, Field(ge=32, le=2048)] = 224,
    length: Annotated[int, Field(ge=1)] = 100_000,
    organs: list[str] | None = None,
    probes: list[Probe] | None = None,
    seed: Annotated[int, Field(ge=0)] = 0,
) -> SyntheticUltrasound:
    """Synthetic multi-organ B-mode corpus generated on the fly (no files, no downloads).

    Args:
        taxonomy: injected organ classes.
        size: image side in pixels.
        length: virtual epoch length.
        organs: subset of taxonomy organs (default: all that have a phantom family).
        probes: probes for every organ (default: each organ's typical probes).
        seed: base seed; item ``i`` is a pure function of ``(seed, i)``.
    """
    return SyntheticUltrasound(
        size=size, length=length, organs=organs, probes=probes, seed=seed, taxonomy=taxonomy
    )


def synthetic_task(
    taxonomy: Taxonomy | None = None,
    task: TaskName = "breast",
    n: Annotated[int, Field(ge=1)] = 512,
    split: Literal["train", "val", "test"] = "train",
    size: Annotated[int, Field(ge=32, le=2048)] = 224,
    seed: Annotated[int, Field(ge=0)] = 0,
) -> SyntheticTask:
    """Labelled synthetic downstream set (lesion class, lung pattern, cardiac view or LV mask).

    Args:
        taxonomy: injected organ classes.
        task: which task.
        n: number of images (balanced over classes).
        split: train, val and test never share samples.
        size: image side in pixels.
        seed: base seed.
    """
    return SyntheticTask(task, n, split=split, size=size, seed=seed, taxonomy=taxonomy)


@hookimpl
def arlkit_register_datasets(register) -> None:  # noqa: ANN001 (a Registrar)
    register.add("synthetic", synthetic)
    register.add("synthetic_task", synthetic_task)
