"""Evaluation metrics with bootstrap 95% intervals.

Point values of the classification metrics come from scikit-learn (the ``eval`` extra,
imported when first needed): accuracy, balanced accuracy, macro F1 and macro
one-vs-rest AUROC (for two classes, the AUROC of class 1). Like scikit-learn's defaults,
every macro average runs over the classes the (resampled) test set holds — for F1, those
in the truth or the predictions — so a class absent from a bootstrap draw is left out of
it rather than scored 0. Segmentation metrics come from
per-image confusion matrices: Dice is the mean over foreground classes of
``2·TP / (2·TP + FP + FN)``, mIoU the mean over all classes (background included, as in
mmsegmentation) of ``TP / (TP + FP + FN)``, both accumulated over the whole set.

Intervals are percentile bootstraps over test examples (images) with a fixed seed. A
draw is represented by how often it picks each example (multinomial counts), so all
draws are evaluated at once with vectorised, weighted versions of the same formulas —
scikit-learn called 1000 times per metric would take seconds per evaluation. The tests
check that the weighted versions with unit weights equal scikit-learn.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from arlkit.errors import ArlkitError, DataError

__all__ = [
    "bootstrap_weights",
    "classification_metrics",
    "confusion_matrices",
    "dice_from_confusion",
    "miou_from_confusion",
    "percentile_interval",
    "segmentation_metrics",
    "sklearn_metrics",
    "weighted_auroc",
    "weighted_classification",
]


def sklearn_metrics() -> Any:
    """``sklearn.metrics``, or an error that names the extra to install."""
    try:
        from sklearn import metrics
    except ImportError:  # optional dependency
        raise ArlkitError(
            "evaluation metrics need scikit-learn; install it with: pip install 'arlkit[eval]'"
        ) from None
    return metrics


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Multiplicities of ``n`` examples in ``n_boot`` draws with replacement: ``(n_boot, n)``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """``(low, high)`` percentiles of the finite draws (NaN when there are none)."""
    draws = np.asarray(draws, np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for ``positive`` under example weights (Mann–Whitney, ties = 1/2).

    Args:
        scores: ``(N,)`` scores.
        positive: ``(N,)`` bool, the positive examples.
        weights: ``(D, N)`` non-negative weights, one row per draw.

    Returns:
        ``(D,)``; NaN where a row gives no weight to positives or to negatives.
    """
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    w = weights[:, order]  # (D, N) in score order
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1  # (N,) tie-group id
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)  # (D, G) negative weight per group
    below = np.cumsum(neg_w, axis=1) - neg_w  # negatives strictly below each group
    wins = (w * pos * (below[:, group] + 0.5 * neg_w[:, group])).sum(1)
    w_pos, w_neg = (w * pos).sum(1), (w * ~pos).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((w_pos > 0) & (w_neg > 0), wins / (w_pos * w_neg), np.nan)


def weighted_classification(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The four classification metrics under example weights, one value per row of weights.

    Args:
        labels: ``(N,)`` classes in ``[0, C)``.
        probs: ``(N, C)`` scores; the prediction is the argmax.
        weights: ``(D, N)``; unit weights give the plain (scikit-learn) values.

    Returns:
        ``{"accuracy", "balanced_accuracy", "f1_macro", "auroc"}`` → ``(D,)`` arrays.
    """
    n, c = probs.shape
    pred = probs.argmax(1)
    onehot = np.zeros((n, c * c))
    onehot[np.arange(n), labels * c + pred] = 1.0
    conf = (weights @ onehot).reshape(-1, c, c)  # (D, truth, prediction)
    tp = np.diagonal(conf, axis1=1, axis2=2)  # (D, C)
    support, predicted = conf.sum(2), conf.sum(1)
    total = conf.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)  # classes absent from truth: dropped
        f1_den = support + predicted  # = 2·TP + FP + FN
        # classes neither true nor predicted: dropped (sklearn's default labels), not 0
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, np.nan)
        out = {
            "accuracy": tp.sum(1) / total,
            "balanced_accuracy": np.nanmean(recall, axis=1),
            "f1_macro": np.nanmean(f1, axis=1),
        }
    if c == 2:
        out["auroc"] = weighted_auroc(probs[:, 1], labels == 1, weights)
    else:  # macro over the classes a draw contains (absent ones have no positives)
        per_class = np.stack([weighted_auroc(probs[:, k], labels == k, weights) for k in range(c)], 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            out["auroc"] = np.nanmean(per_class, axis=1)
    return out


def _sklearn_point(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    skm = sklearn_metrics()
    c = prob.shape[1]
    pred = prob.argmax(1)
    present = np.unique(y)
    if present.size < 2:
        auroc = float("nan")
    elif c == 2:
        auroc = float(skm.roc_auc_score(y, prob[:, 1]))
    else:  # one-vs-rest per present class; sklearn's multi_class="ovr" needs every class present
        auroc = float(np.mean([skm.roc_auc_score(y == k, prob[:, k]) for k in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = float(skm.balanced_accuracy_score(y, pred))
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "f1_macro": float(skm.f1_score(y, pred, average="macro")),  # classes in y or pred
        "auroc": auroc,
    }


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Accuracy, balanced accuracy, macro F1 and AUROC with bootstrap 95% intervals.

    Args:
        labels: ``(N,)`` integer class labels in ``[0, C)``.
        probs: ``(N, C)`` class probabilities (or scores whose argmax is the prediction).
        n_boot: bootstrap draws over the N examples (0: no interval, NaN bounds).
        seed: seed of the bootstrap.

    Returns:
        ``{metric: {"value": v, "low": lo, "high": hi}}``.

    Raises:
        DataError: shapes disagree, labels fall outside ``[0, C)``, or N is 0.
    """
    y = np.asarray(labels, np.int64)
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or y.size == 0:
        raise DataError(
            f"metrics: expected labels (N,) and probabilities (N, C) with N > 0, "
            f"got {y.shape} and {p.shape}"
        )
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"metrics: labels must lie in [0, {p.shape[1]}), got {y.min()}..{y.max()}")
    point = _sklearn_point(y, p)
    draws = weighted_classification(y, p, bootstrap_weights(y.size, n_boot, seed)) if n_boot else {}
    out = {}
    for name, value in point.items():
        low, high = percentile_interval(draws[name]) if n_boot else (float("nan"),) * 2
        out[name] = {"value": value, "low": low, "high": high}
    return out


def confusion_matrices(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-image confusion matrices.

    Args:
        pred: ``(N, H, W)`` predicted class per pixel.
        target: ``(N, H, W)`` true class per pixel; values outside ``[0, C)`` are ignored.
        num_classes: C.

    Returns:
        ``(N, C, C)`` int64; ``[n, t, p]`` counts pixels of image n with truth t predicted p.
    """
    pred = np.asarray(pred, np.int64)
    target = np.asarray(target, np.int64)
    if pred.shape != target.shape or pred.ndim != 3:
        raise DataError(
            f"metrics: pred and target must both be (N, H, W), got {pred.shape} and {target.shape}"
        )
    n, c = pred.shape[0], num_classes
    valid = (target >= 0) & (target < c)
    # one bincount over (image, truth, prediction) codes
    codes = (np.arange(n)[:, None, None] * c + target) * c + pred.clip(0, c - 1)
    return np.bincount(codes[valid], minlength=n * c * c).reshape(n, c, c)


def _per_class(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per class of ``(..., C, C)`` confusion matrices → each ``(..., C)``."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    return tp, conf.sum(-2) - tp, conf.sum(-1) - tp


def _masked_mean(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    count = keep.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (values * keep).sum(-1) / count, np.nan)


def dice_from_confusion(conf: np.ndarray) -> np.ndarray | float:
    """Mean foreground Dice (classes 1..C-1) of ``(..., C, C)`` summed confusion matrices.

    A class absent from both truth and prediction is left out of the mean.
    """
    tp, fp, fn = _per_class(conf)
    den = (2 * tp + fp + fn)[..., 1:]
    dice = 2 * tp[..., 1:] / np.where(den > 0, den, 1)
    return _masked_mean(dice, den > 0)[()]


def miou_from_confusion(conf: np.ndarray) -> np.ndarray | float:
    """Mean IoU over all classes of ``(..., C, C)`` confusion matrices (absent classes left out)."""
    tp, fp, fn = _per_class(conf)
    den = tp + fp + fn
    return _masked_mean(tp / np.where(den > 0, den, 1), den > 0)[()]


def segmentation_metrics(
    pred: np.ndarray, target: np.ndarray, num_classes: int, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Dice (foreground mean), mIoU and pixel accuracy with bootstrap intervals over images.

    Args:
        pred: ``(N, H, W)`` predicted labels.
        target: ``(N, H, W)`` true labels (out-of-range values ignored).
        num_classes: number of classes, background = 0.
        n_boot: bootstrap draws over the N images (0: NaN bounds).
        seed: seed of the bootstrap.

    Returns:
        ``{"dice"|"miou"|"pixel_accuracy": {"value", "low", "high"}}``.
    """
    conf = confusion_matrices(pred, target, num_classes).astype(np.float64)  # (N, C, C)
    n, c = conf.shape[:2]
    total = conf.sum(0)
    drawn = None
    if n_boot:
        drawn = (bootstrap_weights(n, n_boot, seed) @ conf.reshape(n, c * c)).reshape(-1, c, c)

    def pixel_accuracy(m: np.ndarray) -> np.ndarray:
        return np.trace(m, axis1=-2, axis2=-1) / np.maximum(m.sum((-2, -1)), 1)

    out = {}
    for name, fn in (("dice", dice_from_confusion), ("miou", miou_from_confusion),
                     ("pixel_accuracy", pixel_accuracy)):
        low, high = percentile_interval(fn(drawn)) if drawn is not None else (float("nan"),) * 2
        out[name] = {"value": float(fn(total)), "low": low, "high": high}
    return out
