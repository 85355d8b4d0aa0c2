"""Row checks of a labelled manifest read by an evaluation (:mod:`arlkit.eval.data`).

Each check names the rows at fault (counting from 1 after the header), what is wrong and
what to write instead: split values outside train/val/test (and their usual spellings),
labels that mix class indices and names. :func:`manifests_in` finds the manifest files of a
folder, which a folder tree of organ sub-folders does not read.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np

from arlkit.data.manifest import MANIFEST_SUFFIXES, row_list
from arlkit.errors import DataError, closest

__all__ = ["SPLIT_NAMES", "check_label_kinds", "check_split_values", "manifests_in"]

#: Accepted values of a ``split`` column (any case) and the split each one means.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def check_split_values(spec: str, m: Any) -> None:
    """Split values other than train/val/test (and their usual spellings) are errors."""
    bad: dict[str, list[int]] = {}
    for i, value in enumerate(m.split):
        if value and value.lower() not in SPLIT_NAMES:
            bad.setdefault(value, []).append(i + 1)  # row numbers count from 1
    if bad:
        parts = []
        for value, rows in bad.items():
            hint = closest(value.lower(), sorted(SPLIT_NAMES))
            parts.append(f"{value!r}" + (f" (did you mean {SPLIT_NAMES[hint]!r}?)" if hint else "")
                         + f" in {row_list(rows)}")
        raise DataError(
            f"--data {spec}: unknown split value {'; '.join(parts)}. Accepted: train, val, test "
            f"(also {', '.join(k for k in SPLIT_NAMES if k not in ('train', 'val', 'test'))}; "
            "any case) or empty; rows count from 1 after the header. Fix the split column"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_label_kinds(spec: str, m: Any) -> None:
    """Labels that mix class indices and names would make ``'1'`` and ``'benign'`` two
    classes of one task: an error naming a row of each kind."""
    if not m.classes:
        return  # all numeric (class indices) or none
    numeric = np.array([_is_number(c) for c in m.classes] + [False])  # [-1] → no label
    labels = np.asarray(m.label, np.int64)
    is_num = numeric[labels]
    has = labels >= 0
    if is_num.any() and (has & ~is_num).any():
        i, j = int(np.flatnonzero(is_num)[0]), int(np.flatnonzero(has & ~is_num)[0])
        raise DataError(
            f"--data {spec}: the label column mixes numbers and names: row {i + 1} has "
            f"{m.classes[labels[i]]!r}, row {j + 1} has {m.classes[labels[j]]!r} (rows count from 1 "
            "after the header), which would make them separate classes. Write every label as "
            "a class index (0, 1, ...) or every label as a name"
        )


def manifests_in(spec: str) -> list[str]:
    """Manifest files directly inside the folder ``spec`` (not read by a folder tree)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec)
    try:
        entries = fs.ls(root, detail=True)
    except OSError:
        return []
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries
                  if e.get("type") == "file" and e["name"].lower().endswith(MANIFEST_SUFFIXES))
