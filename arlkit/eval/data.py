"""Resolve ``--data`` into train/validation/test sets, and the split helpers of evaluation.

``--data`` is either a built-in synthetic task (``synthetic:breast``, ``synthetic:thyroid``,
``synthetic:gallbladder``, ``synthetic:lung``, ``synthetic:cardiac_view``,
``synthetic:cardiac_seg``; sizes from ``--n-train/--n-val/--n-test``) or a manifest / folder
tree with labels (``label`` column; ``mask`` for segmentation). A manifest's ``split``
column is used when present; otherwise examples are split at random, stratified by label
and grouped by ``patient_id``, so that the frames of one patient never straddle two
splits. The validation split picks hyper-parameters (the linear probe's learning rate);
only the test split is reported.

Label fractions and the grouped split live in :mod:`arlkit.eval.splits` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from arlkit.errors import ConfigError, DataError, closest
from arlkit.eval.splits import grouped_split, label_fraction_indices, parse_fractions
from arlkit.taxonomy import Taxonomy

__all__ = [
    "SEGMENTATION_TASKS",
    "SYNTHETIC_TASKS",
    "EvalData",
    "LabelledSubset",
    "dataset_labels",
    "grouped_split",
    "label_fraction_indices",
    "load_eval_data",
    "parse_fractions",
    "task_name",
]

SYNTHETIC_TASKS: tuple[str, ...] = (
    "breast", "thyroid", "gallbladder", "lung", "cardiac_view", "cardiac_seg",
)
SEGMENTATION_TASKS: frozenset[str] = frozenset({"cardiac_seg"})
_MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "dev": "val", "test": "test", "testing": "test"}


@dataclass
class EvalData:
    """Splits of one evaluation task.

    Attributes:
        name: task name for directories and tables (``breast``, a manifest's stem, ...).
        spec: the ``--data`` value.
        train, val, test: map-style datasets of sample dicts.
        classes: class names (classification) or mask classes, background first (segmentation).
        segmentation: whether the task is scored on masks.
        train_labels: ``(len(train),)`` labels of the training split (for label fractions).
        info: how the splits were made, JSON-serialisable.
    """

    name: str
    spec: str
    train: Any
    val: Any
    test: Any
    classes: list[str]
    segmentation: bool
    train_labels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def task_name(spec: str) -> str:
    """Short name of a ``--data`` value: the synthetic task, or the manifest's stem."""
    if spec.startswith("synthetic:"):
        return spec.split(":", 1)[1]
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    return base.split(".", 1)[0] or "data"


class LabelledSubset(Dataset):
    """Items ``indices`` of ``dataset`` whose ``"label"`` is replaced by ``labels``.

    Args:
        dataset: map-style dataset of sample dicts.
        indices: ``(M,)`` rows of ``dataset``.
        labels: ``(M,)`` label per row (e.g. the organ, for a folder tree of organs).

    Attributes:
        labels: the labels as a list (cheap access for stratification).
    """

    def __init__(self, dataset: Any, indices: Sequence[int], labels: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.labels = [int(v) for v in labels]
        if len(self.labels) != len(self.indices):
            raise ValueError("LabelledSubset: one label per index")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[self.indices[i]], "label": self.labels[i]}


def _synthetic(spec: str, image_size: int, sizes: tuple[int, int, int], data_seed: int,
               taxonomy: Taxonomy, segmentation: bool) -> EvalData:
    task = spec.split(":", 1)[1]
    if task not in SYNTHETIC_TASKS:
        hint = closest(task, SYNTHETIC_TASKS)
        raise ConfigError(
            f"--data {spec}: unknown synthetic task {task!r}"
            + (f"; did you mean 'synthetic:{hint}'?" if hint else "")
            + f" (known: {', '.join('synthetic:' + t for t in SYNTHETIC_TASKS)})"
        )
    if segmentation and task not in SEGMENTATION_TASKS:
        raise ConfigError(
            f"--data {spec}: this task has no segmentation masks; use "
            f"{' or '.join('synthetic:' + t for t in sorted(SEGMENTATION_TASKS))}"
        )
    for flag, n in zip(("--n-train", "--n-val", "--n-test"), sizes):
        if n < 1:
            raise ConfigError(f"{flag} must be at least 1, got {n}")
    from arlkit.data.synthetic import SyntheticTask

    train, val, test = (
        SyntheticTask(task, n, split=split, size=image_size, seed=data_seed, taxonomy=taxonomy)
        for n, split in zip(sizes, ("train", "val", "test"))
    )
    classes = list(train.classes)
    labels = dataset_labels(train)
    return EvalData(task, spec, train, val, test, classes, segmentation, labels,
                    {"source": "synthetic", "task": task, "sizes": dict(zip(("train", "val", "test"), sizes)),
                     "data_seed": data_seed})


def dataset_labels(dataset: Any) -> np.ndarray:
    """Labels of every item, from a cheap attribute when the dataset has one."""
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray(values, np.int64)
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, np.int64)]
    manifest = getattr(dataset, "manifest", None)
    if manifest is not None:
        return np.asarray(manifest.label, np.int64)
    return np.array([int(dataset[i]["label"]) for i in range(len(dataset))], np.int64)


def _stat(path: str) -> dict[str, Any]:
    """Size and modification time of a manifest (part of the feature-cache key)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    info = fs.info(root)
    return {k: str(info[k]) for k in ("size", "mtime", "LastModified", "ETag") if k in info}


def _mask_classes(dataset: Any, rows: np.ndarray) -> list[str]:
    """``["background", "1", ..., "K-1"]`` from the largest value in the rows' mask files."""
    import fsspec
    from PIL import Image

    m = dataset.manifest
    top = 1
    for i in rows.tolist():
        if m.mask[i] is None:
            continue
        with fsspec.open(m.mask[i], "rb", **m.storage_options) as handle, Image.open(handle) as im:
            top = max(top, int(np.asarray(im).max()))
    return ["background", *(str(k) for k in range(1, top + 1))]


def _manifest(spec: str, image_size: int, taxonomy: Taxonomy, segmentation: bool,
              val_fraction: float, test_fraction: float, seed: int) -> EvalData:
    from arlkit.data.dataset import ManifestDataset

    dataset = ManifestDataset(spec, taxonomy, size=image_size)
    m = dataset.manifest
    if len(dataset) == 0:
        raise DataError(f"--data {spec}: the manifest lists no images")
    labels = np.asarray(m.label, np.int64)
    label_source = "label"
    classes = list(m.classes)
    if segmentation:
        keep = np.flatnonzero([u is not None for u in m.mask])
        what = "segmentation masks (a 'mask' column)"
    else:
        if (labels < 0).all() and not spec.lower().endswith(_MANIFEST_SUFFIXES):
            # a folder tree of organ sub-folders: the organ is the class (ImageFolder's rule)
            present = sorted(set(np.asarray(m.organ).tolist()) - {taxonomy.unknown_index})
            labels = np.array([present.index(o) if o in present else -1 for o in m.organ], np.int64)
            classes, label_source = [taxonomy.name(o) for o in present], "organ"
        keep = np.flatnonzero(labels >= 0)
        what = "labels (a 'label' column, or organ sub-folders)"
    if keep.size == 0:
        raise DataError(f"--data {spec}: no row has {what}; add them to the manifest")
    if not segmentation:
        if np.unique(labels[keep]).size < 2:
            raise DataError(f"--data {spec}: every labelled row has the same label; need 2+ classes")
        n_cls = int(labels[keep].max()) + 1
        classes = classes if len(classes) >= n_cls else [str(c) for c in range(n_cls)]
    y = labels[keep].clip(min=0)
    groups = [m.patient_id[i] for i in keep]
    given = [_SPLIT_NAMES.get(m.split[i].lower(), "") for i in keep]
    if "test" in given:
        idx = {s: np.array([k for k, g in enumerate(given) if g == s], np.int64)
               for s in ("train", "val", "test")}
        if idx["val"].size == 0 and idx["train"].size > 1 and val_fraction > 0:
            # no validation rows: carve them out of train, by patient
            tr, va, _ = grouped_split(y[idx["train"]], [groups[k] for k in idx["train"]],
                                      val_fraction, 1e-9, seed)
            idx["train"], idx["val"] = idx["train"][tr], idx["train"][va]
        method = "manifest split column"
    else:
        tr, va, te = grouped_split(y, groups, val_fraction, test_fraction, seed)
        idx = {"train": tr, "val": va, "test": te}
        method = "stratified by label, grouped by patient_id" if any(groups) else "stratified by label"
    if idx["train"].size == 0 or idx["test"].size == 0:
        raise DataError(
            f"--data {spec}: too few usable rows ({keep.size}) to split into train and test"
        )
    if segmentation:
        classes = _mask_classes(dataset, keep[idx["train"]])
    subsets = {s: LabelledSubset(dataset, keep[idx[s]], labels[keep[idx[s]]]) for s in idx}
    info = {"source": "manifest", "path": spec, "stat": _stat(spec), "split": method, "rows": len(dataset),
            "used": int(keep.size), "label_source": label_source,
            "sizes": {s: int(v.size) for s, v in idx.items()}}
    return EvalData(task_name(spec), spec, subsets["train"], subsets["val"], subsets["test"],
                    classes, segmentation, y[idx["train"]], info)


def load_eval_data(
    spec: str,
    image_size: int,
    taxonomy: Taxonomy,
    *,
    segmentation: bool = False,
    n_train: int = 200,
    n_val: int = 100,
    n_test: int = 200,
    data_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> EvalData:
    """Build the splits of a ``--data`` value.

    Args:
        spec: ``synthetic:TASK`` or a manifest / folder path (local or fsspec URL).
        image_size: side of the square images the datasets produce.
        taxonomy: the backbone's taxonomy (organ indices of the samples).
        segmentation: whether masks are needed.
        n_train, n_val, n_test: synthetic split sizes.
        data_seed: seed of the synthetic generator.
        val_fraction, test_fraction: shares of a manifest without a split column.
        seed: seed of a manifest's random split.

    Returns:
        The :class:`EvalData`.

    Raises:
        ConfigError: unknown synthetic task (with a suggestion) or bad sizes.
        DataError: empty manifest, missing labels or masks, too few rows.
    """
    if spec.startswith("synthetic:"):
        return _synthetic(spec, image_size, (n_train, n_val, n_test), data_seed, taxonomy, segmentation)
    if spec.startswith("synthetic"):
        raise ConfigError(f"--data {spec}: write synthetic:TASK with TASK one of {', '.join(SYNTHETIC_TASKS)}")
    from arlkit.eval.backbones import _exists

    if not _exists(spec):
        raise ConfigError(
            f"--data {spec}: no such manifest or folder; pass a labelled manifest "
            f"(CSV/JSONL/Parquet), a folder, or synthetic:TASK ({', '.join(SYNTHETIC_TASKS)})"
        )
    return _manifest(spec, image_size, taxonomy, segmentation, val_fraction, test_fraction, seed)


def subset(dataset: Dataset, indices: Sequence[int]) -> Subset:
    """``torch.utils.data.Subset`` of ``dataset`` (kept here so callers import one module)."""
    return Subset(dataset, list(map(int, indices)))


__all__ += ["subset"]
