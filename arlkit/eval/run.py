"""One evaluation: a backbone, a task, a protocol, one or more label fractions → results.

:func:`run_eval` is what every ``arlkit eval`` command calls. It resolves the backbone
and the data, runs the protocol for every label fraction with the same seeds, and writes
into the output directory:

- ``settings.json``: the resolved settings, provenance (backbone fingerprint, checkpoint,
  data splits), library versions and seeds — enough to reproduce the numbers;
- ``results.json``: every metric with its bootstrap 95% interval, per label fraction, and
  ``bad_files``: the count and the list of the unreadable images left out (also named on
  the output, see :mod:`arlkit.eval.badfiles`).

Settings, the output and cache directories and the ``--data`` value are checked before any
work (:func:`check_config`), so that a typo never costs a feature extraction. The same
configuration and seed give the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from arlkit.engine.data import share_cores
from arlkit.errors import ConfigError, DataError
from arlkit.eval.backbones import ResolvedBackbone, backbone_fingerprint, resolve_backbone
from arlkit.eval.badfiles import bad_file_summary, warning_line
from arlkit.eval.config import DEFAULT_BATCH, PROTOCOLS, EvalConfig
from arlkit.eval.data import check_data_spec, load_eval_data, task_name
from arlkit.eval.features import POOLS, resolve_device
from arlkit.eval.protocols import format_metrics, run_classification, run_segmentation

__all__ = ["PROTOCOLS", "EvalConfig", "check_config", "check_dir", "check_fresh", "default_out", "run_eval",
           "summary_lines", "write_json"]


def default_out(protocol: str, data: str, backbone_name: str) -> str:
    """``runs/eval/<protocol>-<task>-<backbone name>``."""
    return os.path.join("runs", "eval", f"{protocol}-{task_name(data)}-{backbone_name}")


def _versions() -> dict[str, str]:
    import timm

    import arlkit

    out = {"arlkit": arlkit.__version__, "torch": torch.__version__, "timm": timm.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    try:
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    return out


def check_dir(flag: str, path: str) -> None:
    """Raise unless ``path`` is, or can be created as, a directory this process can write.

    Remote URLs are left to the write itself.

    Raises:
        ConfigError: ``path`` (or a folder above it) is a file, or is not writable.
    """
    if "://" in path:
        return
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: this is a file, not a directory; pass a directory "
                              "(it is created when missing) or remove the file")
        target = path
    else:
        target = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            raise ConfigError(f"{flag} {path}: {target} is a file, so the directory cannot be "
                              "created; pass another path")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {target} is not writable; pass a directory you can "
                          "write to")


def check_fresh(out: str, overwrite: bool) -> None:
    """Raise when ``out`` holds the ``results.json`` of an earlier evaluation (it would be
    replaced), unless ``overwrite``.

    Raises:
        ConfigError: names the directory and the two ways on.
    """
    if overwrite or "://" in out or not os.path.exists(os.path.join(out, "results.json")):
        return
    raise ConfigError(
        f"{out} already holds the results of an earlier evaluation (results.json); pass "
        "--out DIR to keep them, or --overwrite to replace them"
    )


def _number_problems(cfg: EvalConfig) -> list[str]:
    """What is wrong with the numeric options (each offending option on its own)."""
    problems = []

    def at_least(flag: str, value: float | None, low: float) -> None:
        if value is not None and not value >= low:  # NaN fails too
            problems.append(f"{flag} must be >= {low:g}, got {value:g}")

    at_least("--n-last-blocks", cfg.n_last_blocks, 1)
    at_least("--batch-size", cfg.batch_size, 1)
    at_least("--n-boot", cfg.n_boot, 0)
    at_least("--steps", cfg.steps, 1)
    at_least("--epochs", cfg.epochs, 1)
    at_least("--image-size", cfg.image_size, 1)
    at_least("--workers", cfg.workers, 0)
    at_least("--seed", cfg.seed, 0)
    at_least("--data-seed", cfg.data_seed, 0)
    at_least("--k", cfg.k, 1)
    at_least("--decoder-channels", cfg.decoder_channels, 1)
    if cfg.lrs is not None:
        bad = [v for v in cfg.lrs if not (math.isfinite(v) and v > 0)]
        if not cfg.lrs:
            problems.append("--lr: give at least one learning rate, e.g. --lr 0.01,0.1")
        elif bad:
            problems.append(f"--lr must be > 0, got {', '.join(f'{v:g}' for v in bad)}")
    if cfg.weight_decay is not None and not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        problems.append(f"--weight-decay must be >= 0, got {cfg.weight_decay:g}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        problems.append(f"--temperature must be > 0, got {cfg.temperature:g}")
    if not 0 < cfg.layer_decay <= 1:
        problems.append(f"--layer-decay must be in (0, 1], got {cfg.layer_decay:g}")
    if not 0 <= cfg.drop_path < 1:
        problems.append(f"--drop-path must be in [0, 1), got {cfg.drop_path:g}")
    return problems


def check_config(cfg: EvalConfig) -> None:
    """Check every setting, ``--device``, ``--cache-dir``, ``--out`` (when given) and the
    ``--data`` value, before any work.

    Raises:
        ConfigError: names each offending option, what is wrong, and what to pass.
    """
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if cfg.pool not in POOLS:
        raise ConfigError(f"--pool {cfg.pool!r}: choose one of {', '.join(POOLS)}")
    if cfg.solver not in ("sgd", "lbfgs"):
        raise ConfigError(f"--solver {cfg.solver!r}: choose sgd or lbfgs")
    if cfg.solver == "lbfgs" and cfg.protocol == "linear":
        if cfg.lrs is not None or cfg.epochs is not None or cfg.steps is not None:
            raise ConfigError("--lr, --epochs and --steps set the sgd solver; the lbfgs solver "
                              "trains to convergence and sweeps L2 penalties (fix one with "
                              "--weight-decay)")
        if cfg.weight_decay is not None and cfg.weight_decay <= 0:
            raise ConfigError(f"--weight-decay with --solver lbfgs must be > 0, got {cfg.weight_decay}")
    problems = _number_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    resolve_device(cfg.device)
    if cfg.cache_dir is not None:
        try:
            check_dir("--cache-dir", cfg.cache_dir)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --no-cache") from None
    if cfg.out is not None:
        check_dir("--out", cfg.out)
        check_fresh(cfg.out, cfg.overwrite)
    check_data_spec(cfg.data)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A short human summary of ``results.json`` content, one line per label fraction."""
    head = f"{results['protocol']} · {results['task']} · {results['backbone']}"
    lines = []
    for frac, metrics in results["metrics"].items():
        n = results["details"].get(frac, {}).get("n_train", "?")
        lines.append(f"{head} · {float(frac) * 100:g}% labels (n_train {n}): {format_metrics(metrics)}")
    return lines


def run_eval(
    cfg: EvalConfig,
    backbone: ResolvedBackbone | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one evaluation and write ``settings.json`` and ``results.json``.

    Args:
        cfg: the settings (``cfg.out`` None → :func:`default_out`).
        backbone: an already resolved backbone (``compare`` resolves each once).
        log: progress lines (default: silent).
        warn: what was left out (unreadable images, rows without labels), one line each
            (default: ``log`` with a ``warning:`` prefix).

    Returns:
        The results (also in ``results.json``), with ``"out"`` the output directory.

    Raises:
        ConfigError: bad settings, backbone or data specification.
        DataError: data unusable for the protocol.
    """
    log = log or (lambda _line: None)
    warn = warn or (lambda line: log(f"warning: {line}"))
    check_config(cfg)
    started = time.time()
    torch.manual_seed(cfg.seed)
    bb = backbone or resolve_backbone(cfg.backbone, cfg.arch, cfg.seed)
    out = cfg.out or default_out(cfg.protocol, cfg.data, bb.name)
    if cfg.out is None:  # a given --out was checked with the settings
        check_dir("--out", out)
        check_fresh(out, cfg.overwrite)
    patch = int(getattr(bb.model, "patch_size", 16))
    size = cfg.image_size or int(getattr(bb.model, "img_size", 224))
    if size % patch:
        raise ConfigError(
            f"--image-size {size} is not a multiple of the backbone's patch size {patch}; "
            f"use {max(patch, round(size / patch) * patch)}"
        )
    cfg = dataclasses.replace(cfg, image_size=size,
                              batch_size=cfg.batch_size or DEFAULT_BATCH[cfg.protocol])
    device = resolve_device(cfg.device)
    data = load_eval_data(cfg.data, size, bb.model.taxonomy, segmentation=cfg.protocol == "segment",
                          n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                          data_seed=cfg.data_seed, seed=cfg.seed)
    for line in data.notes:
        log(line)
    for line in data.warnings:
        warn(line)
    if data.info.get("label_source") == "organ" and cfg.use_organ:
        # the class is the organ: conditioning on it would hand the answer to the backbone
        cfg = dataclasses.replace(cfg, use_organ=False)
        log("labels are the organs of the folder tree: the organ condition is switched off")
    if cfg.protocol != "segment" and (data.train_labels < 0).any():
        raise DataError(
            f"--data {cfg.data}: training examples without image labels; "
            + ("this is a segmentation task: use 'arlkit eval segment'"
               if data.info.get("task") in ("cardiac_seg",) else "give every row a label")
        )
    log(f"{cfg.protocol} on {data.name} ({len(data.train)}/{len(data.val)}/{len(data.test)} "
        f"train/val/test, {size}px) with {bb.name} [{bb.kind}: {bb.source}] on {device}")
    run = run_segmentation if cfg.protocol == "segment" else run_classification
    bad: list[dict[str, str]] = []
    with share_cores(device, cfg.workers):
        metrics, details = run(cfg, bb, data, device, log, bad_files=bad)
    bad_files = bad_file_summary(bad)
    results = {"protocol": cfg.protocol, "task": data.name, "backbone": bb.name, "data": cfg.data,
               "classes": data.classes, "metrics": metrics, "details": details,
               "sizes": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
               "bad_files": bad_files, "seconds": round(time.time() - started, 2)}
    settings = {"config": {**dataclasses.asdict(cfg), "out": out},
                "backbone": {"name": bb.name, "kind": bb.kind, "source": bb.source, **bb.info,
                             "fingerprint": backbone_fingerprint(bb.model)},
                "data": data.info, "device": str(device), "versions": _versions(),
                "seeds": {"protocol": cfg.seed, "data": cfg.data_seed, "bootstrap": cfg.seed}}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "settings.json"), settings)
    write_json(os.path.join(out, "results.json"), results)
    if bad_files["count"]:
        warn(warning_line(bad_files["files"], f"All are listed in {os.path.join(out, 'results.json')} "
                          "(bad_files); fix or remove them to evaluate every row"))
    return {**results, "out": out}


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN becomes null)."""
    with open(path, "w") as handle:
        json.dump(_plain(obj), handle, indent=2, allow_nan=False)
        handle.write("\n")
