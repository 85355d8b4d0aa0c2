"""Linear probing: a linear classifier on frozen features, learning rate picked on validation.

As in the MAE and DINO evaluations, features are standardised with the training split's
statistics (MAE's affine-free BatchNorm before the linear layer), the classifier is
trained with SGD (momentum 0.9, cosine schedule) for a fixed number of epochs at every
learning rate of a small sweep, and the rate with the best validation balanced accuracy
is kept. The test split is used once, by the chosen classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError

__all__ = [
    "DEFAULT_LRS",
    "LinearClassifier",
    "LinearProbeResult",
    "linear_probe",
    "train_linear",
    "train_linear_many",
]

#: Learning rates of the sweep (standardised features, SGD with momentum).
DEFAULT_LRS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)


class LinearClassifier(nn.Module):
    """Standardisation with fixed statistics followed by ``nn.Linear``.

    Args:
        mean: ``(D,)`` feature means of the training split.
        std: ``(D,)`` feature standard deviations (floored at 1e-6).
        num_classes: outputs.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(1e-6).clone())
        self.linear = nn.Linear(mean.numel(), num_classes)
        nn.init.zeros_(self.linear.weight)  # logistic regression is convex: zero start is exact and seedless
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of features ``(B, D)``."""
        return self.linear((x - self.mean) / self.std)


def train_linear_many(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: tuple[float, ...],
    epochs: int = 100,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> list[LinearClassifier]:
    """Train one :class:`LinearClassifier` per learning rate, all in the same batched pass.

    The classifiers see the same mini-batches (same seed), so a sweep costs about as much
    as one run; each behaves exactly as if trained alone with SGD (momentum 0.9, L2
    ``weight_decay`` on the weights, cosine decay of its rate to 0).

    Args:
        x: ``(N, D)`` features.
        y: ``(N,)`` labels in ``[0, num_classes)``.
        num_classes: outputs.
        lrs: peak learning rates, one classifier each.
        epochs: passes over the data.
        weight_decay: L2 penalty on the weights.
        batch_size: examples per step.
        seed: shuffling seed.

    Returns:
        the trained classifiers (eval mode), in the order of ``lrs``.

    Raises:
        ConfigError: empty training set.
    """
    x, y = x.float(), y.long()
    if x.shape[0] == 0:
        raise ConfigError("linear probe: the training split is empty")
    n, d = x.shape
    mean = x.mean(0)
    std = (x.std(0, unbiased=False) if n > 1 else torch.ones_like(mean)).clamp_min(1e-6)
    xs = (x - mean) / std
    peak = torch.tensor(lrs, dtype=torch.float32)  # (L,)
    # logistic regression is convex: a zero start is exact and needs no seed
    w = torch.zeros(len(lrs), d, num_classes, requires_grad=True)  # (L, D, C)
    b = torch.zeros(len(lrs), 1, num_classes, requires_grad=True)  # (L, 1, C)
    mom_w, mom_b = torch.zeros_like(w), torch.zeros_like(b)
    total = max(1, epochs * math.ceil(n / batch_size))
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = torch.matmul(xs[idx], w) + b  # (B, D) @ (L, D, C) -> (L, B, C)
            # summed over classifiers: each one's gradient is that of its own mean loss
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(lrs)),
                                   reduction="sum") / idx.numel()
            gw, gb = torch.autograd.grad(loss, (w, b))
            lr = (peak * 0.5 * (1 + math.cos(math.pi * step / total)))[:, None, None]
            with torch.no_grad():
                mom_w.mul_(0.9).add_(gw + weight_decay * w)
                mom_b.mul_(0.9).add_(gb)
                w.sub_(lr * mom_w)
                b.sub_(lr * mom_b)
            step += 1
    out = []
    for k in range(len(lrs)):
        clf = LinearClassifier(mean, std, num_classes)
        with torch.no_grad():
            clf.linear.weight.copy_(w[k].T)
            clf.linear.bias.copy_(b[k, 0])
        out.append(clf.eval())
    return out


def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lr: float,
    epochs: int = 100,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> LinearClassifier:
    """Train one :class:`LinearClassifier` (see :func:`train_linear_many`)."""
    return train_linear_many(x, y, num_classes, (lr,), epochs, weight_decay, batch_size, seed)[0]


def _balanced_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    pred = logits.argmax(1)
    recalls = [(pred[y == c] == c).float().mean().item() for c in torch.unique(y)]
    return float(np.mean(recalls))


@dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        lr: the chosen learning rate.
        val_scores: validation balanced accuracy per learning rate.
        test_probs: ``(N_test, C)`` class probabilities of the chosen classifier.
        selected_on: ``val``, or ``train`` when the validation split is empty.
        classifier: the chosen classifier.
    """

    lr: float
    val_scores: dict[float, float]
    test_probs: np.ndarray
    selected_on: str
    classifier: LinearClassifier = field(repr=False)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    lrs: tuple[float, ...] = DEFAULT_LRS,
    epochs: int = 100,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> LinearProbeResult:
    """Sweep learning rates, select on validation, predict the test split.

    Args:
        train_x, train_y: ``(N, D)`` features and ``(N,)`` labels to fit.
        val_x, val_y: validation features and labels (may be empty: then the training
            split selects, which the result records).
        test_x: ``(M, D)`` test features.
        num_classes: number of classes.
        lrs: learning rates tried.
        epochs, weight_decay, batch_size, seed: see :func:`train_linear`.

    Returns:
        The :class:`LinearProbeResult`; ties go to the smaller learning rate.
    """
    if not lrs:
        raise ConfigError("linear probe: give at least one learning rate")
    sel_x, sel_y, selected_on = (val_x, val_y, "val") if len(val_y) else (train_x, train_y, "train")
    best: tuple[float, float, LinearClassifier] | None = None
    scores: dict[float, float] = {}
    lrs = tuple(sorted(lrs))
    models = train_linear_many(train_x, train_y, num_classes, lrs, epochs, weight_decay,
                               batch_size, seed)
    for lr, clf in zip(lrs, models):
        with torch.no_grad():
            scores[lr] = _balanced_accuracy(clf(sel_x.float()), sel_y)
        if best is None or scores[lr] > best[1]:
            best = (lr, scores[lr], clf)
    assert best is not None
    with torch.no_grad():
        probs = best[2](test_x.float()).softmax(-1).numpy()
    return LinearProbeResult(best[0], scores, probs, selected_on, best[2])
