"""Splits and label fractions: no patient leaks, every class kept, clear errors."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from arlkit.errors import ConfigError, DataError
from arlkit.eval.data import grouped_split, label_fraction_indices, load_eval_data, parse_fractions
from arlkit.taxonomy import Taxonomy


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=300),
    fraction=st.sampled_from([0.01, 0.05, 0.1, 0.5]),
    seed=st.integers(0, 1000),
)
def test_label_fraction_keeps_every_class(labels: list[int], fraction: float, seed: int) -> None:
    y = np.array(labels)
    idx = label_fraction_indices(y, fraction, seed)
    assert set(y[idx].tolist()) == set(labels)  # >= 1 example per class
    for c in set(labels):
        n_c = int((y == c).sum())
        assert int((y[idx] == c).sum()) == min(n_c, max(1, round(fraction * n_c)))
    assert len(set(idx.tolist())) == idx.size  # no duplicates
    assert (idx == label_fraction_indices(y, fraction, seed)).all()  # fixed seed


def test_one_percent_of_a_small_set() -> None:
    y = np.array([0] * 90 + [1] * 9 + [2])
    idx = label_fraction_indices(y, 0.01, seed=0)
    assert sorted(y[idx].tolist()) == [0, 1, 2]
    assert (label_fraction_indices(y, 1.0, seed=0) == np.arange(100)).all()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["", "a", "b", "c", "d", "e", "f", "g"])),
                  min_size=1, max_size=120),
    seed=st.integers(0, 1000),
)
def test_patient_split_never_leaks(rows: list[tuple[int, str]], seed: int) -> None:
    labels = [r[0] for r in rows]
    groups = [r[1] for r in rows]
    parts = grouped_split(labels, groups, 0.2, 0.2, seed)
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(len(rows)))  # a partition
    seen: dict[str, int] = {}
    for k, part in enumerate(parts):
        for i in part.tolist():
            if groups[i]:
                assert seen.setdefault(groups[i], k) == k, f"patient {groups[i]} in two splits"
    assert parts[0].size > 0  # training always gets a group


def test_parse_fractions() -> None:
    assert parse_fractions("1.0,0.01,0.1") == (0.01, 0.1, 1.0)
    with pytest.raises(ConfigError, match="outside"):
        parse_fractions("0,1")
    with pytest.raises(ConfigError, match="not a number"):
        parse_fractions("half")


def test_unknown_synthetic_task_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'synthetic:breast'"):
        load_eval_data("synthetic:brest", 32, Taxonomy())
    with pytest.raises(ConfigError, match="no segmentation masks"):
        load_eval_data("synthetic:breast", 32, Taxonomy(), segmentation=True)
    with pytest.raises(ConfigError, match="no such manifest"):
        load_eval_data("/nonexistent/manifest.csv", 32, Taxonomy())


def test_synthetic_splits() -> None:
    data = load_eval_data("synthetic:thyroid", 32, Taxonomy(), n_train=6, n_val=4, n_test=5)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 5)
    assert data.classes == ["benign", "malignant"]
    assert data.train_labels.tolist() == [data.train[i]["label"] for i in range(6)]
    seg = load_eval_data("synthetic:cardiac_seg", 32, Taxonomy(), segmentation=True,
                         n_train=2, n_val=1, n_test=1)
    assert seg.classes[0] == "background" and seg.segmentation
    assert seg.train[0]["mask"].shape == (32, 32)


def _manifest(tmp_path: pathlib.Path, rows: list[dict[str, str]]) -> str:
    rng = np.random.default_rng(0)
    for r in rows:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / r["path"])
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]) if rows else ["path", "organ", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_manifest_split_groups_patients(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "breast", "label": ["benign", "malignant"][i % 2],
             "patient_id": f"p{i // 3}"} for i in range(36)]
    data = load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy(), seed=3)
    assert data.classes == ["benign", "malignant"]
    patients = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        for i in range(len(split)):
            s = split[i]
            assert patients.setdefault(s["patient_id"], name) == name
            assert s["image"].shape == (1, 32, 32)
    assert len(data.test) > 0 and len(data.train) > len(data.test)
    assert data.info["split"].startswith("stratified by label, grouped")


def test_manifest_split_column_is_used(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "thyroid", "label": str(i % 2),
             "split": "test" if i < 4 else "train"} for i in range(12)]
    data = load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy(), val_fraction=0.0)
    assert len(data.test) == 4 and len(data.train) == 8
    assert data.info["split"] == "manifest split column"


def test_manifest_without_labels_fails_clearly(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "breast"} for i in range(4)]
    with pytest.raises(DataError, match="no row has labels"):
        load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy())


def test_empty_manifest_fails_clearly(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("path,organ,label\n")
    with pytest.raises(DataError):
        load_eval_data(str(path), 32, Taxonomy())


def test_unknown_split_values_are_named(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "thyroid", "label": str(i % 2),
             "split": "tset" if i in (3, 5) else "train" if i < 8 else "test"} for i in range(12)]
    with pytest.raises(DataError) as info:
        load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy())
    msg = str(info.value)
    assert "unknown split value 'tset' (did you mean 'test'?) in rows 4, 6" in msg
    assert "Accepted: train, val, test" in msg


def test_labelled_rows_without_a_split_are_named(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "thyroid", "label": str(i % 2),
             "split": "" if i == 2 else "test" if i < 4 else "train"} for i in range(12)]
    with pytest.raises(DataError, match=r"row 3 \(.*im2.png\) has no split value"):
        load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy())


def test_unlabelled_rows_are_counted(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "thyroid", "label": "" if i in (0, 7) else str(i % 2)}
            for i in range(20)]
    data = load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy())
    assert data.info["left_out"] == 2 and data.info["used"] == 18
    assert len(data.warnings) == 1
    assert "2 of 20 rows have no label and are left out (rows 1, 8: " in data.warnings[0]


def test_numbers_mixed_with_names_are_an_error(tmp_path: pathlib.Path) -> None:
    rows = [{"path": f"im{i}.png", "organ": "thyroid", "label": "benign" if i == 4 else str(i % 2)}
            for i in range(12)]
    with pytest.raises(DataError, match="mixes numbers and names: row 1 has '0', row 5 has 'benign'"):
        load_eval_data(_manifest(tmp_path, rows), 32, Taxonomy())


@pytest.mark.parametrize(("values", "classes", "seen"), [
    ((0, 255), ["background", "1"], {0, 1}),  # a binary mask saved as an 8-bit image
    ((0, 1, 2), ["background", "1", "2"], {0, 1, 2}),  # class indices, as they are
    ((0, 255, 1), ["background", "1"], {0, 1, -100}),  # 255 beside classes: "ignore"
])
def test_mask_values_become_classes(tmp_path: pathlib.Path, values, classes, seen) -> None:
    rows = []
    for i in range(12):
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 10:20] = values[1 + i % (len(values) - 1)]
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append({"path": f"im{i}.png", "organ": "breast", "mask": f"m{i}.png",
                     "split": "test" if i >= 8 else "train"})
    data = load_eval_data(_manifest(tmp_path, rows), 40, Taxonomy(), segmentation=True)
    assert data.classes == classes
    binary = values == (0, 255)
    assert any("only the values 0 and 255" in note for note in data.notes) == binary
    ignore = 255 in values and len(values) > 2
    assert any("255 in the masks is read as 'ignore'" in n for n in data.notes) == ignore
    for split in (data.train, data.test):  # every split reads its masks the same way
        assert {int(v) for i in range(len(split)) for v in np.unique(split[i]["mask"])} == seen


def test_a_class_only_the_test_masks_hold_still_counts(tmp_path: pathlib.Path) -> None:
    rows = []
    for i in range(12):
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 10:20] = 3 if i >= 8 else 1  # class 3 only in the test rows
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append({"path": f"im{i}.png", "organ": "breast", "mask": f"m{i}.png",
                     "split": "test" if i >= 8 else "train"})
    data = load_eval_data(_manifest(tmp_path, rows), 40, Taxonomy(), segmentation=True)
    assert data.classes == ["background", "1", "2", "3"]  # not dropped from the metrics
