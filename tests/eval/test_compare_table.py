"""eval compare: every cell of the table is the number of the run it names."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import pytest
from eval_helpers import labelled_rows, write_manifest
from hypothesis import given
from hypothesis import strategies as st

from arlkit.eval.compare import compare, write_tables
from arlkit.eval.run import EvalConfig


def test_tasks_of_one_name_get_their_own_columns(tiny_export: str, tmp_path: pathlib.Path) -> None:
    """Two manifests called manifest.csv (what ``arlkit data synth`` writes) are two tasks: each
    has its own run directory and columns, and each cell is that run's results.json."""
    first = write_manifest(tmp_path / "a", labelled_rows(12, 6, 8))
    rows = labelled_rows(12, 6, 8)
    for r in rows:  # other labels: other numbers
        r["label"] = str(int(r["path"][2:-4]) // 2 % 2)
    second = write_manifest(tmp_path / "b", rows)
    base = EvalConfig(protocol="knn", backbone=tiny_export, data=first, image_size=32, n_boot=20,
                      device="cpu", cache_dir=None)
    out = tmp_path / "cmp"
    summary = compare([tiny_export], [first, second], base, str(out))
    assert [pathlib.Path(r).name for r in summary["runs"]] == ["knn-manifest-tiny", "knn-manifest-2-tiny"]
    md = (out / "table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| backbone |"))
    assert header == ("| backbone | manifest accuracy | manifest auroc | manifest-2 accuracy "
                      "| manifest-2 auroc |")
    cells = next(line for line in md.splitlines() if line.startswith("| tiny |")).split(" | ")[1:]
    table = {(r["task"], r["metric"]): r for r in csv.DictReader(open(out / "table.csv"))}
    for task, run in zip(("manifest", "manifest-2"), summary["runs"]):
        results = json.loads(pathlib.Path(run, "results.json").read_text())
        assert results["data"] == (first if task == "manifest" else second)
        for metric, v in results["metrics"]["1"].items():
            row = table[(task, metric)]
            assert [float(row[k]) for k in ("value", "low", "high")] == [v["value"], v["low"], v["high"]]
    run_cells = []
    for run in summary["runs"]:
        m = json.loads(pathlib.Path(run, "results.json").read_text())["metrics"]["1"]
        run_cells += [f"{m[k]['value']:.3f} ({m[k]['low']:.3f}–{m[k]['high']:.3f})"
                      for k in ("accuracy", "auroc")]
    assert [c.strip(" |") for c in cells] == run_cells


def test_cells_without_a_number_show_none(tmp_path: pathlib.Path) -> None:
    """Without bootstrap (--n-boot 0) the bounds are NaN (null in results.json), and an AUROC
    of a one-class test split is NaN: the table shows no interval and a dash, not 'nan'."""
    nan = float("nan")
    rows = [
        {"backbone": "a", "task": "t", "protocol": "linear", "fraction": 1.0, "metric": "accuracy",
         "value": 0.75, "low": nan, "high": nan},
        {"backbone": "a", "task": "t", "protocol": "linear", "fraction": 1.0, "metric": "auroc",
         "value": nan, "low": nan, "high": nan},
        {"backbone": "b", "task": "t", "protocol": "linear", "fraction": 1.0, "metric": "accuracy",
         "value": 0.5, "low": 0.25, "high": 0.625},
        {"backbone": "b", "task": "t", "protocol": "linear", "fraction": 1.0, "metric": "auroc",
         "value": None, "low": None, "high": None},
    ]
    write_tables(rows, str(tmp_path), ("accuracy", "auroc"))
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| a | **0.750** | – |" in lines
    assert "| b | 0.500 (0.250–0.625) | – |" in lines
    assert not any("nan" in line for line in lines)
    assert math.isnan(rows[0]["low"])  # the rows themselves are not changed


def test_repeated_names_get_suffixes_that_collide_with_nothing() -> None:
    from arlkit.eval.compare import _distinct

    assert _distinct(["manifest", "manifest", "manifest-2"]) == ["manifest", "manifest-3", "manifest-2"]
    assert _distinct(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


@given(st.lists(st.sampled_from(["m", "m-2", "m-3", "x"]), max_size=8))
def test_distinct_names_are_distinct_and_keep_first_uses(names: list[str]) -> None:
    from arlkit.eval.compare import _distinct

    out = _distinct(names)
    assert len(set(out)) == len(out) == len(names)
    for i, (name, got) in enumerate(zip(names, out)):
        if name not in names[:i]:  # a suffix never takes a name that is used as it is
            assert got == name
        else:
            assert got.startswith(f"{name}-")


def test_bars_draw_each_bootstrap_interval_where_it_lies(tmp_path: pathlib.Path,
                                                         monkeypatch) -> None:
    """The drawn interval is [low, high] even when the point estimate lies outside it (a
    percentile bootstrap interval need not contain it); no interval without bounds."""
    import matplotlib.figure

    from arlkit.eval.compare import plot_bars

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: drawn.append(fig))
    rows = [
        {"backbone": "a", "task": "t", "metric": "accuracy", "fraction": 1.0,
         "value": 0.9, "low": 0.6, "high": 0.8},  # the estimate above its interval
        {"backbone": "b", "task": "t", "metric": "accuracy", "fraction": 1.0,
         "value": 0.7, "low": None, "high": None},  # --n-boot 0
    ]
    plot_bars(rows, str(tmp_path / "bars.png"), ["accuracy"])
    (fig,) = drawn
    ax = fig.axes[0]
    vertical = [seg for c in ax.collections for seg in c.get_segments()
                if abs(seg[0][0] - seg[1][0]) < 1e-12]
    assert len(vertical) == 1  # one interval: b has none
    assert sorted(p[1] for p in vertical[0]) == pytest.approx([0.6, 0.8])
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.9, 0.7]
