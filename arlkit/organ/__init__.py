"""Beyond fixed organ labels: organ recognition, ``organ="auto"``, new organs, robustness.

::

    from arlkit.organ import AutoOrganBackbone, add_organ, train_organ_classifier

    head = train_organ_classifier(backbone, images, organs, backbone.taxonomy)
    auto = AutoOrganBackbone(backbone, head)
    tokens = auto.forward_features(x, organ="auto")   # no label needed
    add_organ(backbone, "ovary_new", few_images, head=head)   # old outputs unchanged

Nothing here imports pluggy, pydantic or rich (the objective lives in
:mod:`arlkit.organ.objective`, registered by :mod:`arlkit.organ.plugin`).
"""

from __future__ import annotations

from arlkit.organ.auto import AUTO, AutoOrganBackbone
from arlkit.organ.classifier import (
    OrganClassifier,
    head_from_run,
    load_head,
    organ_features,
    save_head,
    stack_samples,
    train_organ_classifier,
)
from arlkit.organ.extend import AddedOrgan, add_organ, conditioner_tables
from arlkit.organ.robustness import RobustnessRow, corrupt_labels, fit_probe, robustness_row

__all__ = [
    "AUTO",
    "AddedOrgan",
    "AutoOrganBackbone",
    "OrganClassifier",
    "RobustnessRow",
    "add_organ",
    "conditioner_tables",
    "corrupt_labels",
    "fit_probe",
    "head_from_run",
    "load_head",
    "organ_features",
    "robustness_row",
    "save_head",
    "stack_samples",
    "train_organ_classifier",
]
