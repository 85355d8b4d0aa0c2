"""``arlkit organ train|predict|add|robustness`` through a parser built with register()."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
from PIL import Image

from arlkit.cli.organ import register
from arlkit.data.synthetic import SyntheticUltrasound
from arlkit.engine.export import read_export
from arlkit.errors import ConfigError, DataError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="arlkit")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def _manifest(tmp_path, organs: list[str], name: str = "m.csv") -> str:
    ds = SyntheticUltrasound(size=32, length=max(1, len(organs)), seed=1)
    rows = []
    for i, organ in enumerate(organs):
        img = (ds[i]["image"][0].numpy() * 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        rows.append(f"{path.name},{organ}")
    out = tmp_path / name
    out.write_text("path,organ\n" + "\n".join(rows) + ("\n" if rows else ""))
    return str(out)


@pytest.fixture
def head_file(export_file, tmp_path):
    out = str(tmp_path / "head.safetensors")
    assert _run(["organ", "train", "--backbone", export_file, "--data", "synthetic", "--n", "96",
                 "--steps", "40", "--out", out]) == 0
    return out


def test_train_and_predict(export_file, head_file, tmp_path):
    from arlkit.organ import load_head

    assert load_head(head_file).taxonomy.num_classes == 16
    manifest = _manifest(tmp_path, ["liver", "kidney", "", "cardiac"])
    out = str(tmp_path / "pred.csv")
    assert _run(["organ", "predict", "--backbone", export_file, "--head", head_file,
                 "--data", manifest, "--out", out, "--min-confidence", "0.99"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4
    assert [r["given"] for r in rows] == ["liver", "kidney", "unknown", "cardiac"]
    for r in rows:
        conf = float(r["confidence"])
        assert 0 < conf <= 1 and float(r["second_confidence"]) <= conf
        if conf < 0.99:
            assert r["status"] == "low_confidence"
        else:
            mismatch = r["given"] not in ("unknown", r["organ"])
            assert r["status"] == ("label_mismatch" if mismatch else "ok")
    # a low threshold: every labelled row is either confirmed or flagged as a mismatch
    assert _run(["organ", "predict", "--backbone", export_file, "--head", head_file,
                 "--data", manifest, "--out", out, "--min-confidence", "0"]) == 0
    for r in csv.DictReader(open(out)):
        expected = "ok" if r["given"] in ("unknown", r["organ"]) else "label_mismatch"
        assert r["status"] == expected


def test_unknown_organ_and_empty_manifest_fail(export_file, head_file, tmp_path):
    bad = _manifest(tmp_path, ["liver", "livr"], "bad.csv")
    with pytest.raises(DataError, match="livr"):
        _run(["organ", "predict", "--backbone", export_file, "--head", head_file,
              "--data", bad, "--out", str(tmp_path / "p.csv")])
    empty = _manifest(tmp_path, [], "empty.csv")
    with pytest.raises(DataError):
        _run(["organ", "train", "--backbone", export_file, "--data", empty])
    with pytest.raises(ConfigError, match="no such manifest"):
        _run(["organ", "train", "--backbone", export_file, "--data", str(tmp_path / "nope.csv")])


def test_add_organ_command(export_file, head_file, tmp_path):
    manifest = _manifest(tmp_path, ["ovary_new"] * 3 + ["liver", "kidney"])
    out = str(tmp_path / "ext.safetensors")
    assert _run(["organ", "add", export_file, "--name", "ovary_new", "--data", manifest,
                 "--head", head_file, "--steps", "3", "--out", out]) == 0
    _, config, meta = read_export(out)
    assert config["taxonomy"][-1] == "ovary_new" and len(config["taxonomy"]) == 17
    assert json.loads(meta["added_organs"]) == ["ovary_new"]
    with pytest.raises(ConfigError, match="already in the taxonomy"):
        _run(["organ", "add", export_file, "--name", "liver", "--data", manifest, "--out", out])
    other = _manifest(tmp_path, ["liver", "kidney"], "other.csv")
    with pytest.raises(DataError, match="no row has organ 'ovary_new'"):
        _run(["organ", "add", export_file, "--name", "ovary_new", "--data", other, "--out", out])


def test_robustness_command(export_file, head_file, tmp_path, capsys):
    out = str(tmp_path / "rob.json")
    assert _run(["organ", "robustness", "--backbone", export_file, "--head", head_file,
                 "--data", "synthetic:breast", "--n-train", "24", "--n-test", "20",
                 "--out", out]) == 0
    table = json.load(open(out))
    assert [r["mode"] for r in table] == ["SoftEmbeddingConditioner", "auto"]
    assert table[1]["drop"] == 0.0
