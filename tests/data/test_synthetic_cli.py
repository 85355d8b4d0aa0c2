"""``arlkit data synth`` and ``arlkit data show``."""

from __future__ import annotations

import argparse
import csv
import io

import fsspec
import numpy as np
import pytest
from PIL import Image

from arlkit.cli import data as data_cli
from arlkit.data.synthetic import SyntheticTask, SyntheticUltrasound
from arlkit.errors import ConfigError


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(["data", *argv])
    return args.handler(args)


def read_manifest(path) -> list[dict[str, str]]:
    with fsspec.open(path, "r") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def test_synth_corpus_writes_pngs_in_organ_folders_and_a_manifest(tmp_path) -> None:
    out = tmp_path / "corpus"
    assert (
        run(
            "synth",
            "--out",
            str(out),
            "--n",
            "6",
            "--organs",
            "lung",
            "cardiac",
            "--size",
            "48",
            "--seed",
            "2",
        )
        == 0
    )
    rows = read_manifest(out / "manifest.csv")
    assert list(rows[0]) == ["path", "organ", "probe", "split", "label", "mask", "patient_id"]
    corpus = SyntheticUltrasound(size=48, length=6, organs=["lung", "cardiac"], seed=2)
    assert [r["organ"] for r in rows] == [corpus.organ(i) for i in range(6)]
    for i, row in enumerate(rows):
        assert row["path"].startswith(row["organ"] + "/") and row["split"] == "train"
        assert row["label"] == row["mask"] == row["patient_id"] == ""
        pixels = np.asarray(Image.open(out / row["path"]))
        assert pixels.shape == (48, 48) and pixels.dtype == np.uint8
        expected = np.clip(corpus[i]["image"][0].numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(pixels, expected)
        assert row["probe"] == corpus[i]["probe"]


def test_synth_task_writes_labels_and_masks(tmp_path) -> None:
    run(
        "synth",
        "--out",
        str(tmp_path / "breast"),
        "--n",
        "4",
        "--task",
        "breast",
        "--split",
        "test",
        "--size",
        "40",
    )
    rows = read_manifest(tmp_path / "breast" / "manifest.csv")
    task = SyntheticTask("breast", 4, split="test", size=40)
    assert [int(r["label"]) for r in rows] == task.labels
    assert {r["split"] for r in rows} == {"test"} and all(r["mask"] == "" for r in rows)

    run("synth", "--out", str(tmp_path / "lv"), "--n", "3", "--task", "cardiac_seg", "--size", "40")
    rows = read_manifest(tmp_path / "lv" / "manifest.csv")
    seg = SyntheticTask("cardiac_seg", 3, size=40)
    for i, row in enumerate(rows):
        assert row["label"] == "" and row["mask"].startswith("masks/cardiac/")
        mask = np.asarray(Image.open(tmp_path / "lv" / row["mask"]))
        np.testing.assert_array_equal(mask, seg[i]["mask"].numpy())
        assert set(np.unique(mask)) == {0, 1}


def test_synth_to_an_fsspec_url() -> None:
    fs = fsspec.filesystem("memory")
    if fs.exists("/synth-test"):  # the memory filesystem lives as long as the process
        fs.rm("/synth-test", recursive=True)
    run("synth", "--out", "memory://synth-test", "--n", "2", "--organs", "testis", "--size", "32")
    rows = read_manifest("memory://synth-test/manifest.csv")
    with fsspec.open("memory://synth-test/" + rows[1]["path"], "rb") as f:
        assert Image.open(f).size == (32, 32)


@pytest.mark.parametrize("url", [False, True])
def test_synth_refuses_a_folder_that_holds_a_manifest(tmp_path, url) -> None:
    out = "memory://synth-refuse" if url else str(tmp_path / "task")
    fs, root = fsspec.core.url_to_fs(out)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    run("synth", "--out", out, "--n", "12", "--task", "breast", "--size", "32")
    manifest = fs.cat_file(f"{root}/manifest.csv")
    files = sorted(fs.find(root))
    for again in (["--n", "2"], ["--n", "2", "--task", "breast", "--split", "val"]):
        with pytest.raises(ConfigError) as info:
            run("synth", "--out", out, "--size", "32", *again)
        assert str(info.value) == (
            f"data synth: {out}/manifest.csv already exists (12 rows); choose another --out "
            "(one folder per set or split) or remove it")
        assert fs.cat_file(f"{root}/manifest.csv") == manifest  # the 12 labelled rows
        assert sorted(fs.find(root)) == files  # and not one image written


def test_synth_rejects_conflicting_or_bad_options(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--task fixes the organ"):
        run("synth", "--out", str(tmp_path), "--n", "2", "--task", "lung", "--organs", "lung")
    with pytest.raises(ConfigError, match="--n"):
        run("synth", "--out", str(tmp_path), "--n", "0")
    with pytest.raises(ConfigError, match="unknown organ 'knee'"):
        run("synth", "--out", str(tmp_path), "--n", "2", "--organs", "knee")


def test_show_draws_one_row_per_organ_or_class(tmp_path) -> None:
    out = tmp_path / "grid.png"
    assert (
        run(
            "show",
            "--organs",
            "liver",
            "fetal",
            "lung",
            "--n",
            "3",
            "--size",
            "40",
            "--out",
            str(out),
        )
        == 0
    )
    sheet = Image.open(out)
    gap, caption = 4, 24
    assert sheet.size == (150 + 3 * (40 + gap) + gap, caption + 3 * (40 + gap) + gap)
    pixels = np.asarray(sheet)
    assert (
        pixels[caption + gap : caption + gap + 40, 150 + gap : 150 + gap + 40].std() > 10
    )  # an image
    run("show", "--task", "cardiac_view", "--n", "2", "--size", "40", "--out", str(out))
    assert Image.open(out).size[1] == caption + 4 * (40 + gap) + gap  # four views
    run("show", "--n", "1", "--size", "32", "--out", str(out))  # --organs all
    assert Image.open(out).size[1] == caption + 16 * (32 + gap) + gap
