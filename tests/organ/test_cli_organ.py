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


def test_unreadable_images_left_out_and_named(export_file, tmp_path, capsys):
    # a manifest row whose file is missing: left out and named on stderr, not a KeyError
    manifest = _manifest(tmp_path, ["liver", "kidney", "liver", "kidney"])
    with open(manifest, "a") as handle:
        handle.write("missing.png,liver\n")
    head = str(tmp_path / "h.safetensors")
    assert _run(["organ", "train", "--backbone", export_file, "--data", manifest,
                 "--steps", "3", "--out", head]) == 0
    assert "missing.png" in capsys.readouterr().err
    out = str(tmp_path / "pred.csv")
    assert _run(["organ", "predict", "--backbone", export_file, "--head", head,
                 "--data", manifest, "--out", out]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["id"].rsplit("/", 1)[-1] for r in rows] == [f"img{i}.png" for i in range(4)]
    assert "missing.png" in capsys.readouterr().err


def test_heldout_accuracy_ignores_unknown_rows():
    import torch

    from arlkit.cli.organ import heldout_accuracy

    pred = torch.tensor([0, 1, 2, 3])
    organs = torch.tensor([0, 16, 2, 1])  # row 1 has no label: it cannot be right or wrong
    acc, n = heldout_accuracy(pred, organs, unknown_index=16)
    assert n == 3 and acc == pytest.approx(2 / 3)  # rows 0 and 2 right of 0, 2, 3 (not 2/4)
    acc, n = heldout_accuracy(pred[1:2], organs[1:2], unknown_index=16)
    assert n == 0 and acc != acc  # nothing labelled: NaN, not 0


def test_heldout_split_keeps_patients_together():
    import torch

    from arlkit.cli.organ import heldout_split

    # 2 organs x 5 patients x 3 frames; holding out 40% of patients takes 2 per organ
    organs = torch.tensor([o for o in (0, 1) for _ in range(15)])
    groups = [f"p{o}{i // 3}" for o in (0, 1) for i in range(15)]
    tr, val = heldout_split(organs, groups, 0.4, seed=3)
    assert len(val) == 2 * 2 * 3 and len(tr) == 30 - len(val)
    assert not {groups[i] for i in val.tolist()} & {groups[i] for i in tr.tolist()}
    assert sorted(organs[val].tolist()) == [0] * 6 + [1] * 6
    assert len(heldout_split(organs, groups, 0.0, 0)[1]) == 0
    with pytest.raises(ConfigError, match="val-fraction"):
        heldout_split(organs, groups, 1.0, 0)


def test_robustness_seed_reaches_the_manifest_split(export_file, monkeypatch):
    # as in 'arlkit eval': --seed also shuffles a manifest's train/test split
    import arlkit.eval.data

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise DataError("stop")

    monkeypatch.setattr(arlkit.eval.data, "load_eval_data", fake)
    with pytest.raises(DataError, match="stop"):
        _run(["organ", "robustness", "--backbone", export_file, "--data", "m.csv", "--seed", "7"])
    assert seen["seed"] == 7 and seen["data_seed"] == 7


def test_second_add_keeps_the_history(export_file, tmp_path):
    first, second = str(tmp_path / "e1.safetensors"), str(tmp_path / "e2.safetensors")
    m1 = _manifest(tmp_path, ["ovary_new", "ovary_new", "liver"], "m1.csv")
    assert _run(["organ", "add", export_file, "--name", "ovary_new", "--data", m1,
                 "--steps", "1", "--out", first]) == 0
    m2 = _manifest(tmp_path, ["other_new", "other_new", "liver"], "m2.csv")
    assert _run(["organ", "add", first, "--name", "other_new", "--data", m2,
                 "--steps", "1", "--out", second]) == 0
    _, config, meta = read_export(second)
    assert config["taxonomy"][-2:] == ["ovary_new", "other_new"]
    assert json.loads(meta["added_organs"]) == ["ovary_new", "other_new"]
