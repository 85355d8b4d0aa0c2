"""Several backbones × several tasks under one protocol → tables and plots, like the paper's.

Every (task, backbone) pair runs :func:`arlkit.eval.run.run_eval` with the same settings
and seeds into ``OUT/runs/<protocol>-<task>-<backbone>``; segmentation tasks
(``synthetic:cardiac_seg``) use the ``segment`` protocol whatever the classification
protocol is. Two ``--data`` values with one task name (``manifest.csv`` in two folders) are
told apart as ``manifest`` and ``manifest-2``, as two backbones of one name are. The
comparison writes into ``OUT``:

- ``table.md``: one table per label fraction, backbones as rows, ``task metric`` as
  columns, ``value (low–high)`` with the best value of each column in bold;
- ``table.csv`` and ``results.json``: the same numbers in long form;
- ``bars.png``: bars with 95% intervals at the largest label fraction, one panel per metric;
- ``fractions.png``: the label-fraction curves (with several fractions), one panel per task.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from arlkit.errors import ArlkitError, ConfigError, closest
from arlkit.eval.data import SEGMENTATION_TASKS, check_data_spec, task_name
from arlkit.eval.run import EvalConfig, check_config, check_dir, check_fresh, run_eval, write_json

__all__ = [
    "ALL_CLASSIFICATION_METRICS",
    "ALL_SEGMENTATION_METRICS",
    "CLASSIFICATION_METRICS",
    "SEGMENTATION_METRICS",
    "check_metrics",
    "compare",
    "plot_bars",
    "plot_fractions",
    "rows_from_results",
    "write_tables",
]

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "auroc")
SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "miou")
#: Every metric the protocols report (:mod:`arlkit.eval.metrics`); ``--metrics`` picks among them.
ALL_CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")
ALL_SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "miou", "pixel_accuracy")


def _is_segmentation(data: str) -> bool:
    """Whether compare scores ``data`` with the segment protocol."""
    return data.startswith("synthetic:") and task_name(data) in SEGMENTATION_TASKS


def check_metrics(metrics: Sequence[str], datas: Sequence[str] = ()) -> None:
    """Raise unless every name is a reported metric and one of them applies to a task.

    Raises:
        ConfigError: an empty list, an unknown name (with the closest known one), or only
            metrics none of ``datas`` reports.
    """
    known = (*ALL_CLASSIFICATION_METRICS, *ALL_SEGMENTATION_METRICS)
    if not metrics:
        raise ConfigError(f"--metrics: give at least one metric name (known: {', '.join(known)})")
    unknown = [name for name in metrics if name not in known]
    if unknown:
        named = []
        for name in unknown:
            hint = closest(name, known) or next((k for k in known if k.startswith(name)), None)
            named.append(f"{name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        raise ConfigError(f"--metrics: unknown metric {', '.join(named)}; known: {', '.join(known)}")
    if datas:
        reported = set()
        if any(_is_segmentation(d) for d in datas):
            reported.update(ALL_SEGMENTATION_METRICS)
        if not all(_is_segmentation(d) for d in datas):
            reported.update(ALL_CLASSIFICATION_METRICS)
        if not reported & set(metrics):
            raise ConfigError(
                f"--metrics {','.join(metrics)}: no task of this comparison reports them; its "
                f"tasks report {', '.join(m for m in known if m in reported)}"
            )


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or an error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional dependency
        raise ArlkitError("plots need matplotlib; install it with: pip install 'arlkit[eval]'") from None
    return plt


def rows_from_results(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long-form rows ``{backbone, task, protocol, fraction, metric, value, low, high}``."""
    rows = []
    for res in results:
        for frac, metrics in res["metrics"].items():
            for metric, v in metrics.items():
                rows.append({"backbone": res["backbone"], "task": res["task"], "protocol": res["protocol"],
                             "fraction": float(frac), "metric": metric, "value": v["value"],
                             "low": v["low"], "high": v["high"]})
    return rows


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _cell(row: dict[str, Any] | None, bold: bool) -> str:
    """``value (low–high)``; a value or bound that is None or NaN (``null`` in results.json:
    no bootstrap with ``--n-boot 0``, AUROC of a one-class test split) is left out."""
    if row is None or math.isnan(_num(row["value"])):
        return "–"
    text = f"{_num(row['value']):.3f}"
    low, high = _num(row["low"]), _num(row["high"])
    if not (math.isnan(low) or math.isnan(high)):
        text += f" ({low:.3f}–{high:.3f})"
    return f"**{text}**" if bold else text


def _columns(rows: list[dict[str, Any]], metrics: Sequence[str]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for r in rows:
        if r["metric"] in metrics:
            seen[(r["task"], r["metric"])] = None
    return list(seen)


def write_tables(rows: list[dict[str, Any]], out: str, metrics: Sequence[str]) -> dict[str, str]:
    """Write ``table.md`` and ``table.csv`` (all metrics in the CSV, ``metrics`` in markdown)."""
    os.makedirs(out, exist_ok=True)
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    index = {(r["backbone"], r["task"], r["metric"], r["fraction"]): r for r in rows}
    lines = []
    for frac in sorted({r["fraction"] for r in rows}, reverse=True):
        sub = [r for r in rows if r["fraction"] == frac]
        cols = _columns(sub, metrics)
        protocols = ", ".join(sorted({r["protocol"] for r in sub}))
        lines += [f"## {protocols}, {frac * 100:g}% of the training labels", ""]
        lines.append("| backbone | " + " | ".join(f"{t} {m}" for t, m in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        best = {}
        for t, m in cols:
            values = [_num(index[(b, t, m, frac)]["value"]) for b in backbones if (b, t, m, frac) in index]
            values = [v for v in values if v == v]
            best[(t, m)] = max(values) if values else None
        for b in backbones:
            cells = []
            for t, m in cols:
                row = index.get((b, t, m, frac))
                is_best = row is not None and len(backbones) > 1 and _num(row["value"]) == best[(t, m)]
                cells.append(_cell(row, is_best))
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    md = os.path.join(out, "table.md")
    with open(md, "w") as handle:
        handle.write("\n".join(lines))
    path_csv = os.path.join(out, "table.csv")
    with open(path_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["backbone", "task", "protocol", "fraction", "metric",
                                         "value", "low", "high"])
        writer.writeheader()
        writer.writerows(rows)
    return {"markdown": md, "csv": path_csv}


def plot_bars(rows: list[dict[str, Any]], path: str, metrics: Sequence[str]) -> str:
    """Grouped bars (tasks × backbones) with 95% intervals at the largest label fraction."""
    plt = pyplot()
    frac = max(r["fraction"] for r in rows)
    sub = [r for r in rows if r["fraction"] == frac and r["metric"] in metrics and r["value"] is not None]
    shown = [m for m in metrics if any(r["metric"] == m for r in sub)]
    if not shown:
        raise ConfigError(f"compare: none of the metrics {list(metrics)} is in the results")
    backbones = list(dict.fromkeys(r["backbone"] for r in sub))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 + 2.2 * len(shown) * len(backbones) ** 0.5, 3.6),
                             squeeze=False)
    width = 0.8 / len(backbones)
    for ax, metric in zip(axes[0], shown):
        tasks = list(dict.fromkeys(r["task"] for r in sub if r["metric"] == metric))
        for j, b in enumerate(backbones):
            xs, ys, spans = [], [], []
            for i, t in enumerate(tasks):
                r = next((r for r in sub if (r["backbone"], r["task"], r["metric"]) == (b, t, metric)), None)
                if r is None:
                    continue
                v, lo, hi = _num(r["value"]), _num(r["low"]), _num(r["high"])
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v)
                if lo == lo and hi == hi:  # no interval without both bounds (--n-boot 0)
                    spans.append((xs[-1], lo, hi))
            ax.bar(xs, ys, width, label=b)
            # the interval as it is: a percentile bootstrap interval need not contain its
            # point estimate, which yerr (offsets from the bar's top) cannot draw
            for x, lo, hi in spans:
                ax.vlines(x, lo, hi, colors="black", linewidth=1)
                ax.hlines([lo, hi], x - width / 6, x + width / 6, colors="black", linewidth=1)
        ax.set_xticks(range(len(tasks)), tasks, rotation=20)
        ax.set_title(metric)
        ax.set_ylim(0, 1.18)  # headroom for the legend
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left", ncols=min(len(backbones), 3), frameon=False)
    fig.suptitle(f"{frac * 100:g}% of the training labels; bars: 95% bootstrap intervals", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fractions(rows: list[dict[str, Any]], path: str, metrics: Sequence[str]) -> str:
    """Label-fraction curves: one panel per task (its first listed metric), one line per backbone."""
    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        have = [m for m in metrics if any(r["task"] == task and r["metric"] == m for r in rows)]
        if not have:
            continue
        metric = have[0]
        for b in dict.fromkeys(r["backbone"] for r in rows):
            pts = sorted((r["fraction"], _num(r["value"]), _num(r["low"]), _num(r["high"])) for r in rows
                         if (r["backbone"], r["task"], r["metric"]) == (b, task, metric))
            if not pts:
                continue
            f, v, lo, hi = zip(*pts)
            ax.plot(f, v, marker="o", label=b)
            ax.fill_between(f, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("label fraction")
        ax.set_ylabel(metric)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _distinct(names: Sequence[str]) -> list[str]:
    """``names`` with ``-2``, ``-3``... after a repeated one, skipping suffixed names that
    are taken (``manifest``, ``manifest``, ``manifest-2`` → ``manifest``, ``manifest-3``,
    ``manifest-2``)."""
    taken = set(names)
    used: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 1
        while unique in used or (unique != name and unique in taken):
            n += 1
            unique = f"{name}-{n}"
        used.add(unique)
        out.append(unique)
    return out


def _unique_names(resolved: list[Any]) -> None:
    for bb, name in zip(resolved, _distinct([bb.name for bb in resolved])):
        bb.name = name


def _task_names(datas: Sequence[str]) -> list[str]:
    """The task name of every ``--data`` value, ``-2``, ``-3``... after a repeated one."""
    return _distinct([task_name(data) for data in datas])


def compare(
    backbones: Sequence[str],
    datas: Sequence[str],
    base: EvalConfig,
    out: str,
    metrics: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``base.protocol`` for every backbone on every task and write tables and plots.

    Args:
        backbones: ``--backbone`` values (each resolved once; duplicate names get a suffix).
        datas: ``--data`` values (tasks of one name get a suffix in the table and the run
            directories).
        base: shared settings (its ``backbone``/``data``/``out`` are replaced per run).
        out: output directory of the comparison.
        metrics: metrics shown in the markdown table and plots (default: accuracy, AUROC,
            Dice, mIoU); the CSV and JSON hold all of them.
        log: progress lines.
        warn: what each run left out (see :func:`arlkit.eval.run.run_eval`).

    Returns:
        ``{"rows": [...], "runs": [...], "files": {...}}`` (also ``OUT/results.json``).

    Raises:
        ConfigError: bad settings, metric names, ``--data`` values or output directory,
            found before the first run.
    """
    from arlkit.eval.backbones import resolve_backbone

    if not backbones or not datas:
        raise ConfigError("compare: give at least one --backbone and one --data")
    log = log or (lambda _line: None)
    metrics = tuple((*CLASSIFICATION_METRICS, *SEGMENTATION_METRICS) if metrics is None else metrics)
    check_metrics(metrics, datas)
    check_config(base)
    for data in datas:
        check_data_spec(data)
    check_dir("--out", out)
    check_fresh(out, base.overwrite)
    resolved = [resolve_backbone(b, base.arch, base.seed) for b in backbones]
    _unique_names(resolved)
    results = []
    for data, task in zip(datas, _task_names(datas)):
        protocol = "segment" if _is_segmentation(data) else base.protocol
        if task != task_name(data):
            log(f"task {task}: --data {data}")
        for spec, bb in zip(backbones, resolved):
            run_dir = os.path.join(out, "runs", f"{protocol}-{task}-{bb.name}")
            cfg = dataclasses.replace(base, protocol=protocol, backbone=spec, data=data, out=run_dir)
            log(f"== {protocol} · {task} · {bb.name}")
            results.append({**run_eval(cfg, bb, log, warn), "task": task})
    rows = rows_from_results(results)
    files = write_tables(rows, out, metrics)
    files["bars"] = plot_bars(rows, os.path.join(out, "bars.png"), metrics)
    if len({r["fraction"] for r in rows}) > 1:
        files["fractions"] = plot_fractions(rows, os.path.join(out, "fractions.png"), metrics)
    summary = {"rows": rows, "runs": [r["out"] for r in results], "files": files}
    write_json(os.path.join(out, "results.json"), summary)
    return summary
