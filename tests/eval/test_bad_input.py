"""Bad input to ``arlkit eval`` and ``arlkit viz pca``: a clear error (or a warning for what is
left out), before any work, and nothing dropped without a word. In-process through
``arlkit.cli.main``: exit code and stderr, no traceback."""

from __future__ import annotations

import json
import pathlib

import pytest
from eval_helpers import labelled_rows, write_manifest

FAST = ["--image-size", "32", "--n-boot", "2", "--no-cache", "--device", "cpu",
        "--batch-size", "4", "--steps", "2"]




@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if a command gets as far as resolving a backbone."""
    import arlkit.eval.backbones as backbones
    import arlkit.eval.run as run

    def refuse(*_args, **_kwargs):
        raise AssertionError("the bad option was found only after the work started")

    monkeypatch.setattr(run, "resolve_backbone", refuse)
    monkeypatch.setattr(backbones, "resolve_backbone", refuse)


def _results(out: pathlib.Path) -> dict:
    return json.loads((out / "results.json").read_text())


# -- 1. unreadable images are named, counted and recorded ------------------------------------

def test_unreadable_images_are_named_and_recorded(run, tiny_export, tmp_path) -> None:
    rows = labelled_rows()
    manifest = write_manifest(tmp_path, rows, missing=("im1.png",), truncated=("im2.png",))
    out = tmp_path / "knn"
    res = run("eval", "knn", "--backbone", tiny_export, "--data", manifest, *FAST, "--out", str(out))
    assert res.code == 0, res.err
    assert "warning: 2 unreadable image(s) left out (train: 2)" in res.err
    assert f"{tmp_path / 'im1.png'} (FileNotFoundError" in res.err
    assert f"{tmp_path / 'im2.png'} (" in res.err
    assert "features train: (6, " in res.out and "2 unreadable image(s) left out" in res.out
    bad = _results(out)["bad_files"]
    assert bad["count"] == 2
    assert [(f["split"], f["path"]) for f in bad["files"]] == [
        ("train", str(tmp_path / "im1.png")), ("train", str(tmp_path / "im2.png"))]
    assert all(f["reason"] for f in bad["files"])


def test_cached_features_remember_their_unreadable_images(run, tiny_export, tmp_path) -> None:
    manifest = write_manifest(tmp_path, labelled_rows(), missing=("im9.png",))
    argv = ["eval", "knn", "--backbone", tiny_export, "--data", manifest,
            *[a for a in FAST if a != "--no-cache"], "--cache-dir", str(tmp_path / "cache")]
    for name in ("first", "cached"):
        res = run(*argv, "--out", str(tmp_path / name))
        assert res.code == 0, res.err
        assert "1 unreadable image(s) left out (val: 1)" in res.err
        assert _results(tmp_path / name)["bad_files"]["count"] == 1
    assert "(cache)" in res.out


def test_finetune_leaves_out_and_records_unreadable_images(run, tiny_export, tmp_path) -> None:
    manifest = write_manifest(tmp_path, labelled_rows(), missing=("im0.png", "im13.png"))
    out = tmp_path / "ft"
    res = run("eval", "finetune", "--backbone", tiny_export, "--data", manifest, *FAST,
              "--out", str(out))
    assert res.code == 0, res.err
    assert "2 unreadable image(s) left out (train: 1, test: 1)" in res.err
    assert _results(out)["bad_files"]["count"] == 2


def test_a_split_without_readable_images_is_named(run, tiny_export, tmp_path) -> None:
    rows = labelled_rows()
    tests = tuple(r["path"] for r in rows if r["split"] == "test")
    manifest = write_manifest(tmp_path, rows, missing=tests)
    res = run("eval", "linear", "--backbone", tiny_export, "--data", manifest, *FAST)
    assert res.code == 2 and "Traceback" not in res.err
    assert "the test split holds no readable images: all 4 could not be read" in res.err
    assert f"first: {tmp_path / 'im12.png'}: FileNotFoundError" in res.err
    assert "relative to the manifest's folder" in res.err


def test_viz_pca_names_the_rows_it_skips(run, tiny_export, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    manifest = write_manifest(tmp_path, labelled_rows(), truncated=("im13.png",))
    res = run("viz", "pca", "--backbone", tiny_export, "--data", manifest, "--n", "50",
              "--image-size", "32", "--out", str(tmp_path / "pca.png"))
    assert res.code == 0, res.err
    assert "--n 50: " in res.err and "holds 4 image(s) to draw; drawing 4 rows" in res.err
    assert f"1 unreadable image(s) left out (test: 1): {tmp_path / 'im13.png'} (" in res.err
    assert "Those rows are not drawn" in res.err
    assert (tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"


def test_viz_pca_draws_unlabelled_images(run, tiny_export, tmp_path) -> None:
    """A picture needs no labels: an unlabelled manifest is drawn in order, titled by organ."""
    pytest.importorskip("matplotlib")
    rows = [{"path": f"im{i}.png", "organ": "thyroid" if i else ""} for i in range(5)]
    manifest = write_manifest(tmp_path, rows)
    res = run("viz", "pca", "--backbone", tiny_export, "--data", manifest, "--n", "3",
              "--image-size", "32", "--out", str(tmp_path / "pca.png"))
    assert res.code == 0, res.err
    assert "drawing 3 rows in manifest order" in res.out
    assert (tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"
    from arlkit.eval.data import picture_samples
    from arlkit.taxonomy import Taxonomy

    samples, titles, _ = picture_samples(manifest, 32, Taxonomy(), 3)
    assert [s["id"] for s in samples] == [str(tmp_path / f"im{i}.png") for i in range(3)]
    assert titles == ["", "thyroid", "thyroid"]


# -- 2, 3, 6. options are checked up front, each named alone ---------------------------------

@pytest.mark.parametrize("protocol, extra, message", [
    ("linear", ["--device", "gpu"], "--device 'gpu' is not a device; did you mean 'cuda'?"),
    ("linear", ["--workers", "-1"], "--workers must be >= 0, got -1"),
    ("linear", ["--seed", "-1"], "--seed must be >= 0, got -1"),
    ("linear", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("linear", ["--steps", "-5"], "--steps must be >= 1, got -5"),
    ("linear", ["--epochs", "-1"], "--epochs must be >= 1, got -1"),
    ("linear", ["--lr", "-1"], "--lr must be > 0, got -1"),
    ("linear", ["--lr", ""], "--lr: give at least one learning rate"),
    ("knn", ["--image-size", "0"], "--image-size must be >= 1, got 0"),
    ("knn", ["--k", "0"], "--k must be >= 1, got 0"),
    ("finetune", ["--drop-path", "1.5"], "--drop-path must be in [0, 1), got 1.5"),
])
def test_bad_options_fail_before_any_work(run, no_work, protocol, extra, message) -> None:
    base = ["--backbone", "random", "--data", "synthetic:breast", "--n-boot", "2", "--no-cache"]
    res = run("eval", protocol, *base, *extra)
    assert res.code == 2 and "Traceback" not in res.err
    assert res.err.startswith(f"error: {message}"), res.err


def test_bad_n_boot_names_only_itself(run, no_work) -> None:
    res = run("eval", "linear", "--backbone", "random", "--data", "synthetic:breast", "--n-boot", "-1")
    assert res.code == 2
    assert res.err.strip() == "error: --n-boot must be >= 0, got -1"


def test_output_and_cache_paths_are_checked_first(run, no_work, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    base = ["eval", "linear", "--backbone", "random", "--data", "synthetic:breast"]
    res = run(*base, "--out", str(blocker))
    assert res.code == 2 and f"--out {blocker}: this is a file, not a directory" in res.err
    res = run(*base, "--cache-dir", str(blocker))
    assert res.code == 2 and f"--cache-dir {blocker}: this is a file" in res.err
    assert "or pass --no-cache" in res.err
    res = run(*base, "--no-cache", "--out", str(blocker / "sub"))
    assert res.code == 2 and f"{blocker} is a file, so the directory cannot be created" in res.err


def test_default_output_dir_is_checked_before_the_data(run, tiny_export, tmp_path, monkeypatch) -> None:
    import arlkit.eval.run as eval_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "eval" / "linear-breast-tiny").write_text("")
    monkeypatch.setattr(eval_run, "load_eval_data", lambda *a, **k: pytest.fail("data loaded"))
    res = run("eval", "linear", "--backbone", tiny_export, "--data", "synthetic:breast", "--no-cache")
    assert res.code == 2 and "--out runs/eval/linear-breast-tiny: this is a file" in res.err


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "2"], "--alpha must be in [0, 1]"),
    (["--alpha", "-1"], "--alpha must be in [0, 1]"),
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_viz_pca_options_fail_before_any_work(run, no_work, tmp_path, extra, message) -> None:
    res = run("viz", "pca", "--backbone", "random", "--out", str(tmp_path / "p.png"), *extra)
    assert res.code == 2 and res.err.startswith(f"error: {message}"), res.err


def test_viz_pca_out_directory_is_an_error(run, no_work, tmp_path) -> None:
    res = run("viz", "pca", "--backbone", "random", "--out", str(tmp_path))
    assert res.code == 2 and "a directory; pass the PNG file to write" in res.err


# -- 4. compare: metric names and every --data checked before the first run ------------------

@pytest.mark.parametrize("metrics, message", [
    ("", "--metrics: give at least one metric name"),
    (",", "--metrics: give at least one metric name"),
    ("acc,dicee", "--metrics: unknown metric 'acc' (did you mean 'accuracy'?), 'dicee' (did you "
                  "mean 'dice'?); known: accuracy"),
    ("dice", "--metrics dice: no task of this comparison reports them"),
])
def test_compare_checks_metrics_first(run, no_work, tmp_path, metrics, message) -> None:
    res = run("eval", "compare", "--backbone", "random", "--data", "synthetic:breast",
              "--metrics", metrics, "--out", str(tmp_path / "cmp"))
    assert res.code == 2 and res.err.startswith(f"error: {message}"), res.err


def test_compare_checks_every_data_value_first(run, no_work, tmp_path) -> None:
    res = run("eval", "compare", "--backbone", "random", "--data", "synthetic:breast",
              "--data", "synthetic:thyriod", "--out", str(tmp_path / "cmp"))
    assert res.code == 2 and "did you mean 'synthetic:thyroid'?" in res.err


# -- 5. a folder holding a manifest ----------------------------------------------------------

def test_folder_with_a_manifest_hints_at_the_manifest(run, tiny_export, tmp_path) -> None:
    rows = [{**r, "path": f"breast/{r['path']}", "organ": "breast"} for r in labelled_rows()]
    write_manifest(tmp_path / "task", rows)
    res = run("eval", "knn", "--backbone", tiny_export, "--data", str(tmp_path / "task"), *FAST)
    assert res.code == 2 and "Traceback" not in res.err
    assert "read as organ sub-folders, every image is in the 'breast' folder" in res.err
    assert (f"{tmp_path / 'task'} contains manifest.csv: pass --data "
            f"{tmp_path / 'task' / 'manifest.csv'} to use its labels") in res.err


# -- 7. a recipe or a foreign file as --backbone ---------------------------------------------

def test_recipe_or_garbage_as_backbone_says_what_to_pass(run, tmp_path) -> None:
    recipe = tmp_path / "q.yaml"
    recipe.write_text("model: {}\n")
    res = run("eval", "linear", "--backbone", str(recipe), "--data", "synthetic:breast", "--no-cache")
    assert res.code == 2
    assert f"use --backbone random --arch {recipe}" in res.err and "run directory" in res.err
    junk = tmp_path / "junk.bin"
    junk.write_text("not weights")
    res = run("eval", "linear", "--backbone", str(junk), "--data", "synthetic:breast", "--no-cache")
    assert res.code == 2 and "Traceback" not in res.err
    assert f"--backbone {junk}: not a safetensors file" in res.err
    assert "pass an exported backbone" in res.err and "--arch RECIPE.yaml" in res.err


# -- earlier results are not replaced silently -----------------------------------------------

def test_earlier_results_are_kept_unless_overwrite(run, tiny_export, tmp_path) -> None:
    out = tmp_path / "knn"
    argv = ["eval", "knn", "--backbone", tiny_export, "--data", "synthetic:breast", *FAST,
            "--n-train", "8", "--n-val", "4", "--n-test", "8", "--out", str(out)]
    assert run(*argv, "--k", "3").code == 0
    first = (out / "results.json").read_text()
    again = run(*argv, "--k", "5")
    assert again.code == 2
    assert f"{out} already holds the results of an earlier evaluation" in again.err
    assert "--overwrite" in again.err and (out / "results.json").read_text() == first
    assert run(*argv, "--k", "5", "--overwrite").code == 0
    assert json.loads((out / "settings.json").read_text())["config"]["k"] == 5
