"""Resolve ``--data`` into train/validation/test sets, and the split helpers of evaluation.

``--data`` is either a built-in synthetic task (``synthetic:breast``, ``synthetic:thyroid``,
``synthetic:gallbladder``, ``synthetic:lung``, ``synthetic:cardiac_view``,
``synthetic:cardiac_seg``; sizes from ``--n-train/--n-val/--n-test``) or a manifest / folder
tree with labels (``label`` column; ``mask`` for segmentation). A manifest's ``split``
column is used when it names test rows; otherwise examples are split at random, stratified
by label and grouped by ``patient_id``, so that the frames of one patient never straddle
two splits. The validation split picks hyper-parameters (the linear probe's learning rate);
only the test split is reported.

A folder is a tree of organ sub-folders whose organ is the class, also when it holds a
manifest file (``arlkit data synth --task`` writes ``manifest.csv`` beside the organ
folders): its labels are read only when the manifest itself is passed
(``--data DIR/manifest.csv``); the messages and the log say so, rather than guess.

Bad rows are errors naming them: split values other than train/val/test (and their
usual spellings), labels that mix class indices and names, labelled rows without a split
in a manifest whose split column is used. Rows without a label (a mask, for segmentation)
are left out, and :attr:`EvalData.warnings` counts them.

Label fractions and the grouped split live in :mod:`arlkit.eval.splits` (re-exported here).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from arlkit.data.manifest import MANIFEST_SUFFIXES, row_list
from arlkit.errors import ConfigError, DataError, closest
from arlkit.eval.manifest_checks import (
    SPLIT_NAMES,
    check_label_kinds,
    check_split_values,
    manifests_in,
)
from arlkit.eval.splits import grouped_split, label_fraction_indices, parse_fractions
from arlkit.taxonomy import Taxonomy

__all__ = [
    "SEGMENTATION_TASKS",
    "SYNTHETIC_TASKS",
    "EvalData",
    "LabelledSubset",
    "check_data_spec",
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
        notes: lines for the log (how the data was read).
        warnings: what was left out (rows without labels or masks), one line each.
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
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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
        mask_values: mask value → class, for masks whose values are not class indices
            (binary masks saved as 0/255 images: ``{255: 1}``; 255 as "ignore" beside class
            indices: ``{255: NO_MASK}``); other values pass unchanged.

    Attributes:
        labels: the labels as a list (cheap access for stratification).
    """

    def __init__(self, dataset: Any, indices: Sequence[int], labels: Sequence[int],
                 mask_values: dict[int, int] | None = None) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.labels = [int(v) for v in labels]
        self.mask_values = dict(mask_values or {})
        if len(self.labels) != len(self.indices):
            raise ValueError("LabelledSubset: one label per index")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {**self.dataset[self.indices[i]], "label": self.labels[i]}
        if self.mask_values and "mask" in sample:
            mask = sample["mask"]
            for value, cls in self.mask_values.items():
                mask = torch.where(sample["mask"] == value, cls, mask)
            sample["mask"] = mask
        return sample


def _synthetic_task(spec: str) -> str:
    """The task of ``synthetic:TASK``.

    Raises:
        ConfigError: an unknown task, with the closest known one.
    """
    task = spec.split(":", 1)[1]
    if task not in SYNTHETIC_TASKS:
        hint = closest(task, SYNTHETIC_TASKS)
        raise ConfigError(
            f"--data {spec}: unknown synthetic task {task!r}"
            + (f"; did you mean 'synthetic:{hint}'?" if hint else "")
            + f" (known: {', '.join('synthetic:' + t for t in SYNTHETIC_TASKS)})"
        )
    return task


def _synthetic(spec: str, image_size: int, sizes: tuple[int, int, int], data_seed: int,
               taxonomy: Taxonomy, segmentation: bool) -> EvalData:
    task = _synthetic_task(spec)
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


def _mask_classes(dataset: Any, rows: np.ndarray) -> tuple[list[str], dict[int, int], str]:
    """The classes of the rows' mask files, the value map they need, and a note about it.

    Mask values are class indices: ``["background", "1", ..., "K-1"]`` up to the largest
    value. Two conventions for the value 255 are recognised:

    - masks that hold only 0 and 255 are binary masks saved as 8-bit images (the common way
      to ship lesion masks): background and class 1 (``{255: 1}``);
    - 255 beside other class indices is "ignore" (mmsegmentation's ``ignore_index``): those
      pixels count in no loss and no metric (``{255: NO_MASK}``).

    Either way the alternative would be 256 classes of which most never occur.
    """
    import fsspec
    from PIL import Image

    from arlkit.data.dataset import NO_MASK

    m = dataset.manifest
    values: set[int] = set()
    for i in rows.tolist():
        if m.mask[i] is None:
            continue
        with fsspec.open(m.mask[i], "rb", **m.storage_options) as handle, Image.open(handle) as im:
            values.update(int(v) for v in np.unique(np.asarray(im)))
    if 255 in values and values <= {0, 255}:
        note = "the masks hold only the values 0 and 255, read as background and class 1 " \
               "(binary masks saved as 8-bit images)"
        return ["background", "1"], {255: 1}, note
    mapping, note = {}, ""
    if 255 in values:
        values.discard(255)
        mapping = {255: NO_MASK}
        note = ("the value 255 in the masks is read as 'ignore' (mmsegmentation's convention): "
                "those pixels count in no loss and no metric")
    top = max(values | {1})
    return ["background", *(str(k) for k in range(1, top + 1))], mapping, note


def _manifest(spec: str, image_size: int, taxonomy: Taxonomy, segmentation: bool,
              val_fraction: float, test_fraction: float, seed: int) -> EvalData:
    from arlkit.data.dataset import ManifestDataset

    dataset = ManifestDataset(spec, taxonomy, size=image_size)
    m = dataset.manifest
    if len(dataset) == 0:
        raise DataError(f"--data {spec}: the manifest lists no images")
    check_split_values(spec, m)
    folder = not spec.lower().endswith(MANIFEST_SUFFIXES)
    inside = manifests_in(spec) if folder else []
    use_it = (f"; {spec.rstrip('/')} contains {inside[0]}: pass --data "
              f"{posixpath.join(spec.rstrip('/'), inside[0])} to use its labels") if inside else ""
    notes, warnings = [], []
    labels = np.asarray(m.label, np.int64)
    label_source = "label"
    classes = list(m.classes)
    if segmentation:
        keep = np.flatnonzero([u is not None for u in m.mask])
        what, lacking = "segmentation masks (a 'mask' column)", "mask"
    else:
        check_label_kinds(spec, m)
        if (labels < 0).all() and folder:
            # a folder tree of organ sub-folders: the organ is the class (ImageFolder's rule)
            present = sorted(set(np.asarray(m.organ).tolist()) - {taxonomy.unknown_index})
            labels = np.array([present.index(o) if o in present else -1 for o in m.organ], np.int64)
            classes, label_source = [taxonomy.name(o) for o in present], "organ"
            if inside:
                notes.append(f"--data {spec}: a folder, read as organ sub-folders (the organ is "
                             f"the class){use_it} instead")
        keep = np.flatnonzero(labels >= 0)
        what = "labels (a 'label' column, or organ sub-folders)"
        lacking = "label"
    if keep.size == 0:
        raise DataError(f"--data {spec}: no row has {what}; add them to the manifest{use_it}")
    if not segmentation:
        if np.unique(labels[keep]).size < 2:
            only = int(labels[keep][0])
            name = classes[only] if only < len(classes) else str(only)
            found = (f"read as organ sub-folders, every image is in the {name!r} folder"
                     if label_source == "organ" else f"every labelled row has the label {name!r}")
            raise DataError(f"--data {spec}: {found}; need 2+ classes{use_it}")
        n_cls = int(labels[keep].max()) + 1
        classes = classes if len(classes) >= n_cls else [str(c) for c in range(n_cls)]
    if keep.size < len(m):
        left = np.setdiff1d(np.arange(len(m)), keep).tolist()
        if label_source == "organ":
            warnings.append(f"--data {spec}: {len(left)} of {len(m)} images are in the 'unknown' "
                            f"folder and are left out (e.g. {m.paths[left[0]]}); move them into an "
                            "organ folder to use them")
        else:
            warnings.append(f"--data {spec}: {len(left)} of {len(m)} rows have no {lacking} and "
                            f"are left out ({row_list([i + 1 for i in left], 3)}: {m.paths[left[0]]}, ...); give "
                            f"them a {lacking} to use them")
    y = labels[keep].clip(min=0)
    groups = [m.patient_id[i] for i in keep]
    given = [SPLIT_NAMES.get(m.split[i].lower(), "") for i in keep]
    if "test" in given:
        missing = [int(keep[k]) for k, g in enumerate(given) if not g]
        if missing:
            raise DataError(
                f"--data {spec}: {row_list([i + 1 for i in missing])} ({m.paths[missing[0]]}"
                f"{', ...' if len(missing) > 1 else ''}) {'have' if len(missing) > 1 else 'has'} no "
                "split value while other rows name theirs (rows count from 1 after the header); "
                "give every row a split (train, val or test), or leave the whole column empty to "
                "split at random"
            )
        idx = {s: np.array([k for k, g in enumerate(given) if g == s], np.int64)
               for s in ("train", "val", "test")}
        if idx["val"].size == 0 and idx["train"].size > 1 and val_fraction > 0:
            # no validation rows: carve them out of train, by patient
            tr, va, _ = grouped_split(y[idx["train"]], [groups[k] for k in idx["train"]],
                                      val_fraction, 1e-9, seed)
            idx["train"], idx["val"] = idx["train"][tr], idx["train"][va]
        method = "manifest split column"
    else:
        if any(given):
            notes.append(f"--data {spec}: the split column names no test rows; splitting the "
                         f"{keep.size} rows at random (give rows split=test to choose the test set)")
        tr, va, te = grouped_split(y, groups, val_fraction, test_fraction, seed)
        idx = {"train": tr, "val": va, "test": te}
        method = "stratified by label, grouped by patient_id" if any(groups) else "stratified by label"
    if idx["train"].size == 0 or idx["test"].size == 0:
        raise DataError(
            f"--data {spec}: too few usable rows ({keep.size}) to split into train and test"
        )
    mask_values: dict[int, int] = {}
    if segmentation:  # classes from the masks of every split: a test-only class still counts
        classes, mask_values, note = _mask_classes(dataset, keep)
        if note:
            notes.append(f"--data {spec}: {note}")
    subsets = {s: LabelledSubset(dataset, keep[idx[s]], labels[keep[idx[s]]], mask_values)
               for s in idx}
    info = {"source": "manifest", "path": spec, "stat": _stat(spec), "split": method, "rows": len(dataset),
            "used": int(keep.size), "left_out": int(len(dataset) - keep.size),
            "label_source": label_source, "sizes": {s: int(v.size) for s, v in idx.items()}}
    return EvalData(task_name(spec), spec, subsets["train"], subsets["val"], subsets["test"],
                    classes, segmentation, y[idx["train"]], info, notes, warnings)


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
    check_data_spec(spec)
    if spec.startswith("synthetic:"):
        return _synthetic(spec, image_size, (n_train, n_val, n_test), data_seed, taxonomy, segmentation)
    return _manifest(spec, image_size, taxonomy, segmentation, val_fraction, test_fraction, seed)


def picture_samples(
    spec: str, image_size: int, taxonomy: Taxonomy, n: int, *, data_seed: int = 0, seed: int = 0
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Up to ``n`` images of a ``--data`` value to draw, with a title each (for ``viz pca``).

    ``synthetic:TASK``: the first images of its test split, titled by class. A manifest or
    folder needs no labels: its ``test`` rows when it names splits, else its rows in order;
    titled by class when labelled, else by organ (empty when unknown).

    Returns:
        ``(samples, titles, notes)``; ``notes`` say how the rows were chosen.

    Raises:
        ConfigError, DataError: as :func:`load_eval_data`; a manifest that lists no images.
    """
    check_data_spec(spec)
    if spec.startswith("synthetic:"):
        data = load_eval_data(spec, image_size, taxonomy, n_train=1, n_val=1, n_test=n,
                              data_seed=data_seed, seed=seed)
        samples = [data.test[i] for i in range(min(n, len(data.test)))]
        titles = [data.classes[s["label"]] if 0 <= s["label"] < len(data.classes) else ""
                  for s in samples]
        return samples, titles, data.notes
    from arlkit.data.dataset import ManifestDataset

    dataset = ManifestDataset(spec, taxonomy, size=image_size)
    m = dataset.manifest
    if len(dataset) == 0:
        raise DataError(f"--data {spec}: the manifest lists no images")
    test = [i for i in range(len(m)) if SPLIT_NAMES.get(m.split[i].lower()) == "test"]
    rows = (test or list(range(len(m))))[:n]
    notes = [f"--data {spec}: drawing {len(rows)} {'test rows' if test else 'rows in manifest order'}"]
    samples = [dataset[i] for i in rows]
    titles = []
    for i in rows:
        label, organ = int(m.label[i]), int(m.organ[i])
        if label >= 0:
            titles.append(m.classes[label] if label < len(m.classes) else str(label))
        else:
            titles.append(taxonomy.name(organ) if organ != taxonomy.unknown_index else "")
    return samples, titles, notes


def check_data_spec(spec: str) -> None:
    """The cheap checks of a ``--data`` value (a known synthetic task, an existing path),
    made before any work.

    Raises:
        ConfigError: unknown synthetic task (with a suggestion) or no such path.
    """
    if spec.startswith("synthetic:"):
        _synthetic_task(spec)
        return
    if spec.startswith("synthetic"):
        raise ConfigError(f"--data {spec}: write synthetic:TASK with TASK one of {', '.join(SYNTHETIC_TASKS)}")
    from arlkit.eval.backbones import _exists

    if not _exists(spec):
        raise ConfigError(
            f"--data {spec}: no such manifest or folder; pass a labelled manifest "
            f"(CSV/JSONL/Parquet), a folder, or synthetic:TASK ({', '.join(SYNTHETIC_TASKS)})"
        )


def subset(dataset: Dataset, indices: Sequence[int]) -> Subset:
    """``torch.utils.data.Subset`` of ``dataset`` (kept here so callers import one module)."""
    return Subset(dataset, list(map(int, indices)))


__all__ += ["subset"]
