"""Metrics equal scikit-learn and direct computations; bootstrap draws equal resampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from arlkit.errors import DataError
from arlkit.eval.metrics import (
    bootstrap_weights,
    classification_metrics,
    confusion_matrices,
    dice_from_confusion,
    miou_from_confusion,
    segmentation_metrics,
    weighted_auroc,
    weighted_classification,
)

# the reference calls below see bootstrap-like draws where a predicted class is absent
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


def _sklearn(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    c = p.shape[1]
    pred = p.argmax(1)
    present = np.unique(y)
    auroc = (skm.roc_auc_score(y, p[:, 1]) if c == 2
             else np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present]))
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "f1_macro": skm.f1_score(y, pred, average="macro"),  # the classes in y or pred
        "auroc": auroc,
    }


def test_auroc_by_hand() -> None:
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 1+0+1+1 of 4
    s = np.array([0.1, 0.4, 0.35, 0.8])
    pos = np.array([False, False, True, True])
    assert weighted_auroc(s, pos, np.ones((1, 4)))[0] == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    s_tie = np.array([0.2, 0.5, 0.5, 0.9])
    assert weighted_auroc(s_tie, pos, np.ones((1, 4)))[0] == pytest.approx((1 + 0.5 + 1 + 1) / 4)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 40),
    c=st.integers(2, 4),
    seed=st.integers(0, 10_000),
    decimals=st.sampled_from([1, 6]),  # 1 decimal: many ties
)
def test_unit_weights_equal_sklearn(n: int, c: int, seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:2] = [0, 1]  # at least two classes
    p = np.round(rng.random((n, c)), decimals)
    p /= p.sum(1, keepdims=True).clip(1e-9)
    ours = weighted_classification(y, p, np.ones((1, n)))
    ref = _sklearn(y, p)
    for name, value in ref.items():
        assert ours[name][0] == pytest.approx(value, abs=1e-12), name


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 30), c=st.integers(2, 3), seed=st.integers(0, 10_000))
def test_bootstrap_weights_equal_resampling(n: int, c: int, seed: int) -> None:
    """A multinomial weight row gives the metric of the corresponding resample."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    p = rng.random((n, c))
    idx = rng.integers(0, n, n)
    weights = np.bincount(idx, minlength=n)[None].astype(float)
    ours = weighted_classification(y, p, weights)
    yy, pp = y[idx], p[idx]
    assert ours["accuracy"][0] == pytest.approx(skm.accuracy_score(yy, pp.argmax(1)))
    if np.unique(yy).size >= 2:
        assert ours["auroc"][0] == pytest.approx(_sklearn(yy, pp)["auroc"])


def test_classification_metrics_interval_and_determinism() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.stack([1 - y * 0.6 - rng.random(200) * 0.4, y * 0.6 + rng.random(200) * 0.4], 1)
    a = classification_metrics(y, p, n_boot=300, seed=1)
    b = classification_metrics(y, p, n_boot=300, seed=1)
    assert a == b
    for name, v in a.items():
        assert v["low"] <= v["value"] <= v["high"], name
        assert v["value"] == pytest.approx(_sklearn(y, p)[name])
    assert a["auroc"]["high"] - a["auroc"]["low"] < 0.2  # 200 examples: a narrow interval


def test_bootstrap_weights_are_resamples() -> None:
    w = bootstrap_weights(7, 50, seed=3)
    assert w.shape == (50, 7)
    assert (w.sum(1) == 7).all()
    assert (w == bootstrap_weights(7, 50, seed=3)).all()


def test_bad_inputs_raise() -> None:
    with pytest.raises(DataError, match="labels must lie"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2)
    with pytest.raises(DataError, match="expected labels"):
        classification_metrics(np.array([0, 1, 1]), np.ones((2, 2)) / 2)


def test_dice_and_miou_equal_direct_computation() -> None:
    target = np.zeros((2, 4, 4), np.int64)
    pred = np.zeros((2, 4, 4), np.int64)
    target[0, :2, :2] = 1  # 4 foreground pixels
    pred[0, :2, :3] = 1  # 6 predicted, 4 overlap
    target[1, 2:, 2:] = 1  # 4 foreground pixels
    pred[1, 3:, 2:] = 1  # 2 predicted, 2 overlap
    inter = 4 + 2
    fg_t, fg_p = 8, 8
    dice = 2 * inter / (fg_t + fg_p)
    bg_inter = int(((pred == 0) & (target == 0)).sum())
    bg_union = int(((pred == 0) | (target == 0)).sum())
    fg_union = int(((pred == 1) | (target == 1)).sum())
    miou = (bg_inter / bg_union + inter / fg_union) / 2
    conf = confusion_matrices(pred, target, 2).sum(0)
    assert dice_from_confusion(conf) == pytest.approx(dice)
    assert miou_from_confusion(conf) == pytest.approx(miou)
    out = segmentation_metrics(pred, target, 2, n_boot=100, seed=0)
    assert out["dice"]["value"] == pytest.approx(dice)
    assert out["miou"]["value"] == pytest.approx(miou)
    assert out["pixel_accuracy"]["value"] == pytest.approx((pred == target).mean())
    assert out["dice"]["low"] <= out["dice"]["value"] <= out["dice"]["high"]


def test_confusion_ignores_unlabelled_pixels() -> None:
    target = np.array([[[0, 1], [-100, 1]]])
    pred = np.array([[[0, 1], [1, 0]]])
    conf = confusion_matrices(pred, target, 2)[0]
    assert conf.tolist() == [[1, 0], [1, 1]]  # the -100 pixel is not counted


def test_dice_skips_absent_classes() -> None:
    # 3 classes, class 2 never present nor predicted: Dice is class 1's alone
    conf = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    assert dice_from_confusion(conf) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_macro_f1_leaves_out_classes_neither_true_nor_predicted() -> None:
    """A class missing from the test set (or from a bootstrap draw) and never predicted is
    not scored 0: the macro average runs over the classes present, as scikit-learn's
    default ``f1_score(average="macro")`` and the other macro metrics here."""
    y = np.array([0, 0, 1, 1, 1])
    p = np.eye(3)[[0, 1, 1, 1, 0]]  # 3 classes; class 2 neither true nor predicted
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 1 -> 4/6
    hand = (2 / 4 + 4 / 6) / 2
    assert classification_metrics(y, p, n_boot=0)["f1_macro"]["value"] == pytest.approx(hand)
    assert weighted_classification(y, p, np.ones((1, 5)))["f1_macro"][0] == pytest.approx(hand)
    # a draw holding class 2 once (and predicting it right) scores it; one without drops it
    y3, p3 = np.r_[y, 2], np.r_[p, np.eye(3)[[2]]]
    draws = weighted_classification(y3, p3, np.array([[1.0] * 6, [1.0] * 5 + [0.0]]))
    assert draws["f1_macro"][0] == pytest.approx((2 / 4 + 4 / 6 + 1) / 3)
    assert draws["f1_macro"][1] == pytest.approx(hand)
    assert hand == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
