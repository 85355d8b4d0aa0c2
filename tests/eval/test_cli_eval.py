"""The eval commands end to end on tiny settings: outputs, determinism, compare, viz pca."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import pytest
import torch
from eval_helpers import eval_parser, run_cli

from arlkit.errors import ConfigError, DataError


def _results(out: pathlib.Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_linear_writes_settings_and_results(tiny_export: str, small_args: list[str],
                                            tmp_path: pathlib.Path) -> None:
    out = tmp_path / "lin"
    argv = ["eval", "linear", "--backbone", tiny_export, "--data", "synthetic:breast",
            "--label-fraction", "0.1,1.0", "--epochs", "20", *small_args, "--out", str(out)]
    assert run_cli(argv) == 0
    res = _results(out)
    assert res["protocol"] == "linear" and res["task"] == "breast" and res["backbone"] == "tiny"
    assert set(res["metrics"]) == {"0.1", "1"}
    for frac in res["metrics"].values():
        assert set(frac) == {"accuracy", "balanced_accuracy", "f1_macro", "auroc"}
        assert frac["accuracy"]["low"] <= frac["accuracy"]["value"] <= frac["accuracy"]["high"]
    assert res["details"]["0.1"]["n_train"] == 2  # 10% of 12 per class, rounded, >= 1
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["image_size"] == 32 and settings["seeds"]["protocol"] == 0
    assert settings["backbone"]["kind"] == "export" and len(settings["backbone"]["fingerprint"]) == 40
    assert "torch" in settings["versions"]
    # the same command again: identical numbers (features now come from the cache)
    assert run_cli([*argv[:-1], str(tmp_path / "again")]) == 0
    assert _results(tmp_path / "again")["metrics"] == res["metrics"]


def test_linear_lbfgs_solver_records_its_penalty_and_rejects_sgd_settings(
        tiny_export: str, small_args: list[str], tmp_path: pathlib.Path) -> None:
    argv = ["eval", "linear", "--backbone", tiny_export, "--data", "synthetic:breast",
            "--solver", "lbfgs", *small_args]
    assert run_cli([*argv, "--out", str(tmp_path / "a")]) == 0
    details = _results(tmp_path / "a")["details"]["1"]
    assert details["solver"] == "lbfgs" and details["converged"] is True and "lr" not in details
    assert details["weight_decay"] in {float(k) for k in details["val_balanced_accuracy"]}
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())
    assert settings["config"]["solver"] == "lbfgs"
    assert run_cli([*argv, "--weight-decay", "0.01", "--out", str(tmp_path / "b")]) == 0
    fixed = _results(tmp_path / "b")["details"]["1"]
    assert fixed["weight_decay"] == 0.01 and list(fixed["val_balanced_accuracy"]) == ["0.01"]
    with pytest.raises(ConfigError, match="--lr, --epochs and --steps set the sgd solver"):
        run_cli([*argv, "--lr", "0.1"])
    with pytest.raises(ConfigError, match="must be > 0"):
        run_cli([*argv, "--weight-decay", "0"])


def test_random_and_knn_use_the_same_protocol(tiny_export: str, small_args: list[str],
                                              tmp_path: pathlib.Path) -> None:
    common = ["--data", "synthetic:breast", *small_args]
    assert run_cli(["eval", "knn", "--backbone", "random", "--arch", tiny_export, *common,
                    "--out", str(tmp_path / "r")]) == 0
    assert run_cli(["eval", "knn", "--backbone", tiny_export, *common, "--out", str(tmp_path / "t")]) == 0
    r, t = _results(tmp_path / "r"), _results(tmp_path / "t")
    assert r["backbone"] == "random" and r["sizes"] == t["sizes"]
    assert r["metrics"] != t["metrics"]


def test_finetune_and_segment_commands(tiny_export: str, small_args: list[str],
                                       tmp_path: pathlib.Path) -> None:
    assert run_cli(["eval", "finetune", "--backbone", tiny_export, "--data", "synthetic:lung",
                    "--steps", "2", *small_args, "--out", str(tmp_path / "ft")]) == 0
    assert _results(tmp_path / "ft")["details"]["1"]["steps"] == 2
    assert run_cli(["eval", "segment", "--backbone", tiny_export, "--data", "synthetic:cardiac_seg",
                    "--steps", "2", "--decoder-channels", "16", *small_args, "--out", str(tmp_path / "seg")]) == 0
    seg = _results(tmp_path / "seg")
    assert set(seg["metrics"]["1"]) == {"dice", "miou", "pixel_accuracy"}


def test_bad_arguments_fail_clearly(tiny_export: str, small_args: list[str]) -> None:
    with pytest.raises(ConfigError, match="not a multiple of the backbone's patch size 8"):
        run_cli(["eval", "linear", "--backbone", tiny_export, "--data", "synthetic:breast",
                 *small_args, "--image-size", "36"])
    with pytest.raises(DataError, match="segmentation task: use 'arlkit eval segment'"):
        run_cli(["eval", "linear", "--backbone", tiny_export, "--data", "synthetic:cardiac_seg", *small_args])
    with pytest.raises(SystemExit):  # argparse: --backbone is required
        eval_parser().parse_args(["eval", "linear", "--data", "synthetic:breast"])


def test_compare_writes_table_and_plots(tiny_export: str, small_args: list[str],
                                        tmp_path: pathlib.Path) -> None:
    out = tmp_path / "cmp"
    argv = ["eval", "compare", "--backbone", tiny_export, "--backbone", "random", "--arch", tiny_export,
            "--data", "synthetic:breast", "--data", "synthetic:cardiac_seg", "--protocol", "knn",
            "--label-fraction", "0.25,1.0", "--steps", "1", "--freeze-backbone", "--decoder-channels", "16",
            *small_args, "--out", str(out)]
    assert run_cli(argv) == 0
    md = (out / "table.md").read_text()
    assert "| tiny |" in md and "| random |" in md
    assert "breast accuracy" in md and "cardiac_seg dice" in md and "25% of the training labels" in md
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert {r["protocol"] for r in rows} == {"knn", "segment"}
    assert len({(r["backbone"], r["task"], r["fraction"]) for r in rows}) == 2 * 2 * 2
    for png in ("bars.png", "fractions.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["runs"]) == 4 and all(pathlib.Path(r, "results.json").exists() for r in summary["runs"])


def test_viz_pca_writes_a_png(tiny_export: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "pca.png"
    assert run_cli(["viz", "pca", "--backbone", tiny_export, "--backbone", "random", "--arch", tiny_export,
                    "--data", "synthetic:cardiac_view", "--n", "2", "--image-size", "32",
                    "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def _png(path: pathlib.Path, array) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def test_segment_from_a_manifest_with_masks(tiny_export: str, small_args: list[str],
                                            tmp_path: pathlib.Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        image = rng.integers(20, 255, (32, 32), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 4 + i % 8 : 16 + i % 8] = 1 + i % 2  # two foreground classes
        _png(tmp_path / f"im{i}.png", image)
        _png(tmp_path / f"mask{i}.png", mask)
        rows.append({"path": f"im{i}.png", "organ": "cardiac", "mask": f"mask{i}.png",
                     "patient_id": f"p{i // 2}"})
    with open(tmp_path / "seg.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "seg"
    assert run_cli(["eval", "segment", "--backbone", tiny_export, "--data", str(tmp_path / "seg.csv"),
                    "--steps", "1", "--decoder-channels", "8", "--batch-size", "4",
                    *small_args, "--out", str(out)]) == 0
    res = _results(out)
    assert res["classes"] == ["background", "1", "2"] and res["task"] == "seg"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["data"]["split"] == "stratified by label, grouped by patient_id"


def test_folder_of_organs_is_organ_classification(tiny_export: str, small_args: list[str],
                                                  tmp_path: pathlib.Path) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    for organ in ("breast", "thyroid"):
        (tmp_path / "tree" / organ).mkdir(parents=True)
        for i in range(8):
            _png(tmp_path / "tree" / organ / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    out = tmp_path / "org"
    assert run_cli(["eval", "knn", "--backbone", tiny_export, "--data", str(tmp_path / "tree"),
                    *small_args, "--out", str(out)]) == 0
    assert _results(out)["classes"] == ["breast", "thyroid"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["use_organ"] is False  # the organ is the answer: not given


def test_run_eval_leaves_a_core_per_loader_worker(tiny_export: str, tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # like the trainer: 2 cores and 1 loader worker -> the protocol runs PyTorch on 1 thread,
    # and the caller's setting is back afterwards
    import arlkit.eval.run as eval_run

    seen: list[int] = []
    protocol = eval_run.run_classification

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return protocol(*args, **kwargs)

    monkeypatch.setattr(eval_run, "run_classification", spy)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eval_run.run_eval(eval_run.EvalConfig(
            protocol="linear", backbone=tiny_export, data="synthetic:breast", image_size=32,
            n_train=16, n_val=8, n_test=16, n_boot=20, device="cpu", epochs=5, workers=1,
            cache_dir=None, out=str(tmp_path / "out")))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
