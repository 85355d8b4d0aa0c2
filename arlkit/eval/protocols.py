"""The protocols on resolved data: frozen features (linear, kNN), fine-tuning, segmentation.

Each runner repeats its protocol for every label fraction of the configuration (the same
seed for every fraction) and returns ``(metrics, details)`` keyed by the fraction
(``"0.01"``, ``"1"``): the metrics with bootstrap intervals, and what was chosen on the
way (learning rate, kept epoch, steps). Unreadable images are left out of every split and
appended to the ``bad_files`` list a caller passes (``{"split", "path", "reason"}``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from arlkit.eval.backbones import ResolvedBackbone, backbone_fingerprint, unsaved_buffers
from arlkit.eval.config import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_WD,
    MIN_LINEAR_STEPS,
    EvalConfig,
)
from arlkit.eval.data import EvalData, dataset_labels, subset
from arlkit.eval.features import cached_features
from arlkit.eval.metrics import classification_metrics, segmentation_metrics
from arlkit.eval.splits import label_fraction_indices

__all__ = ["format_metrics", "run_classification", "run_segmentation", "split_rows"]

Log = Callable[[str], None]


def _fmt_fraction(f: float) -> str:
    return f"{f:g}"


def _training_kwargs(cfg: EvalConfig, protocol: str, device: torch.device,
                     log: Log) -> dict[str, Any]:
    """Keyword arguments shared by fine-tuning and segmentation, with the protocol's defaults."""
    return {
        "epochs": cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS[protocol],
        "steps": cfg.steps,
        "lr": (cfg.lrs or DEFAULT_LR[protocol])[0],
        "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WD[protocol],
        "layer_decay": cfg.layer_decay,
        "drop_path": cfg.drop_path,
        "batch_size": cfg.batch_size,
        "use_organ": cfg.use_organ,
        "device": device,
        "workers": cfg.workers,
        "seed": cfg.seed,
        "log": log,
    }


def split_rows(dataset: Any) -> str | None:
    """Digest of the rows a split takes from its source (a manifest), or None for a split
    that is a dataset of its own (synthetic).

    Part of the feature-cache key: a manifest without a split column is split by ``--seed``,
    so the same ``--data`` gives other rows under another seed (at the same sizes).
    """
    indices = getattr(dataset, "indices", None)
    if indices is None:
        return None
    return hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()[:20]


def run_classification(cfg: EvalConfig, bb: ResolvedBackbone, data: EvalData, device: torch.device,
              log: Log, bad_files: list[dict[str, str]] | None = None,
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Linear / kNN / fine-tune for every label fraction → (metrics, details) by fraction.

    The unreadable images left out are appended to ``bad_files``.
    """
    from arlkit.eval.finetune import finetune_classifier
    from arlkit.eval.knn import knn_classify
    from arlkit.eval.linear import DEFAULT_LRS, linear_probe

    num_classes = len(data.classes)
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    bad_files = bad_files if bad_files is not None else []
    if cfg.protocol in ("linear", "knn"):
        wd = cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WD[cfg.protocol]
        fp = backbone_fingerprint(bb.model)
        buffers = unsaved_buffers(bb.model)
        feats = {}
        for split in ("train", "val", "test"):
            key = {"backbone": fp, "data": data.spec, "info": data.info, "split": split,
                   "image_size": cfg.image_size, "pool": cfg.pool, "organ": cfg.use_organ}
            if cfg.n_last_blocks != 1:  # keeps the keys (and caches) of one-block features
                key["n_last_blocks"] = cfg.n_last_blocks
            if buffers is not None:  # e.g. a timm backbone's input normalisation
                key["buffers"] = buffers
            rows = split_rows(getattr(data, split))
            if rows is not None:  # which rows: a random manifest split depends on the seed
                key["rows"] = rows
            feats[split], hit = cached_features(
                bb.model, getattr(data, split), key, cfg.cache_dir, pool=cfg.pool,
                use_organ=cfg.use_organ, batch_size=cfg.batch_size, device=device,
                num_workers=cfg.workers, n_last_blocks=cfg.n_last_blocks, split=split)
            bad = feats[split].bad_files
            bad_files.extend({"split": split, "path": p, "reason": r} for p, r in bad)
            log(f"features {split}: {tuple(feats[split].features.shape)}"
                + (" (cache)" if hit else "")
                + (f", {len(bad)} unreadable image(s) left out" if bad else ""))
        train, val, test = feats["train"], feats["val"], feats["test"]
        for frac in cfg.label_fractions:
            sub = train.select(label_fraction_indices(train.labels.numpy(), frac, cfg.seed))
            if cfg.protocol == "linear":
                res = linear_probe(sub.features, sub.labels, val.features, val.labels, test.features,
                                   num_classes, tuple(cfg.lrs or DEFAULT_LRS),
                                   _linear_epochs(cfg.epochs, cfg.steps, len(sub)), wd,
                                   batch_size=_LINEAR_BATCH, seed=cfg.seed, solver=cfg.solver,  # type: ignore[arg-type]
                                   weight_decays=None if cfg.weight_decay is None else (cfg.weight_decay,))
                probs = res.test_probs
                chosen = ({"lr": res.lr} if res.solver == "sgd" else
                          {"weight_decay": res.weight_decay, "converged": res.converged})
                details[_fmt_fraction(frac)] = {"n_train": len(sub), "solver": res.solver, **chosen,
                                                "val_balanced_accuracy": {f"{k:g}": v for k, v in res.val_scores.items()},
                                                "selected_on": res.selected_on}
                if not res.converged:
                    log(f"fraction {frac:g}: L-BFGS stopped before converging at weight decay "
                        f"{res.weight_decay:g}; the result is that of the last iterate")
            else:
                probs = knn_classify(sub.features, sub.labels, test.features, num_classes,
                                     cfg.k, cfg.temperature).numpy()
                details[_fmt_fraction(frac)] = {"n_train": len(sub), "k": min(cfg.k, len(sub)),
                                                "temperature": cfg.temperature}
            metrics[_fmt_fraction(frac)] = classification_metrics(test.labels.numpy(), probs,
                                                                  cfg.n_boot, cfg.seed)
            log(f"fraction {frac:g}: {format_metrics(metrics[_fmt_fraction(frac)])}")
        return metrics, details
    kwargs = _training_kwargs(cfg, "finetune", device, log)
    lr = kwargs["lr"]
    for frac in cfg.label_fractions:
        idx = label_fraction_indices(data.train_labels, frac, cfg.seed)
        res = finetune_classifier(bb.model, subset(data.train, idx), data.val, data.test,
                                  num_classes, pool=cfg.pool, **kwargs)
        bad_files.extend(res.bad_files)
        labels = res.test_labels if res.test_labels is not None else dataset_labels(data.test)
        metrics[_fmt_fraction(frac)] = classification_metrics(labels, res.test_probs, cfg.n_boot, cfg.seed)
        details[_fmt_fraction(frac)] = {"n_train": int(idx.size), "lr": lr, "best_epoch": res.best_epoch,
                                        "val_balanced_accuracy": res.val_scores, "steps": res.steps}
        log(f"fraction {frac:g}: {format_metrics(metrics[_fmt_fraction(frac)])}")
    return metrics, details


_LINEAR_BATCH = 256


def _linear_epochs(epochs: int | None, steps: int | None, n: int) -> int:
    """Epochs of the linear probe on ``n`` examples.

    ``--steps`` counts optimizer steps of 256 examples and wins over ``--epochs``; with
    neither, the probe runs 100 epochs but at least :data:`MIN_LINEAR_STEPS` steps, so that
    small training sets converge.
    """
    per_epoch = max(1, math.ceil(n / _LINEAR_BATCH))
    if steps is not None:
        return max(1, math.ceil(steps / per_epoch))
    if epochs is not None:
        return epochs
    return max(DEFAULT_EPOCHS["linear"], math.ceil(MIN_LINEAR_STEPS / per_epoch))


def run_segmentation(cfg: EvalConfig, bb: ResolvedBackbone, data: EvalData, device: torch.device,
             log: Log, bad_files: list[dict[str, str]] | None = None,
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """UPerNet for every label fraction → (metrics, details) by fraction (unreadable images
    appended to ``bad_files``)."""
    from arlkit.eval.segment import decoder_width, train_segmentation

    bad_files = bad_files if bad_files is not None else []
    num_classes = len(data.classes)
    kwargs = _training_kwargs(cfg, "segment", device, log)
    lr = kwargs["lr"]
    metrics, details = {}, {}
    for frac in cfg.label_fractions:
        idx = label_fraction_indices(data.train_labels, frac, cfg.seed)
        res = train_segmentation(bb.model, subset(data.train, idx), data.val, data.test,
                                 num_classes, freeze_backbone=cfg.freeze_backbone,
                                 channels=cfg.decoder_channels, **kwargs)
        bad_files.extend(res.bad_files)
        metrics[_fmt_fraction(frac)] = segmentation_metrics(res.pred, res.target, num_classes,
                                                            cfg.n_boot, cfg.seed)
        details[_fmt_fraction(frac)] = {"n_train": int(idx.size), "lr": lr, "best_epoch": res.best_epoch,
                                        "val_dice": res.val_scores, "steps": res.steps,
                                        "decoder_channels": cfg.decoder_channels
                                        or decoder_width(int(bb.model.embed_dim))}
        log(f"fraction {frac:g}: {format_metrics(metrics[_fmt_fraction(frac)])}")
    return metrics, details


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """``accuracy 0.7200 [0.6550, 0.7800], ...`` for a log line."""
    return ", ".join(f"{k} {v['value']:.4f} [{v['low']:.4f}, {v['high']:.4f}]" for k, v in metrics.items())
