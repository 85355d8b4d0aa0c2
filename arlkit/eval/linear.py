"""Linear probing: a linear classifier on frozen features, its setting picked on validation.

As in the MAE and DINO evaluations, features are standardised with the training split's
statistics (MAE's affine-free BatchNorm before the linear layer). Two solvers:

- ``sgd`` (the default, DINO/MAE): SGD (momentum 0.9, cosine schedule) for a fixed number
  of epochs at every learning rate of a small sweep;
- ``lbfgs`` (CLIP's linear probe): multinomial logistic regression solved to convergence
  by L-BFGS (scikit-learn) at every L2 penalty of a sweep. On the few hundred labelled
  images of typical ultrasound tasks it is exact where SGD stops short, and its result
  does not depend on a step budget.

The setting with the best validation balanced accuracy is kept; the test split is used
once, by the chosen classifier. A penalty ``weight_decay`` means the same for both
solvers: the objective is the mean cross-entropy plus ``weight_decay / 2 · ‖W‖²``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_LRS",
    "fit_logistic_many",
    "LinearClassifier",
    "LinearProbeResult",
    "linear_probe",
    "train_linear",
    "train_linear_many",
]

#: Learning rates of the sweep (standardised features, SGD with momentum).
DEFAULT_LRS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
#: L2 penalties (``weight_decay`` on the mean loss) of the ``lbfgs`` solver's sweep.
DEFAULT_L2: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: L-BFGS iterations per fit; a fit that needs more is reported as not converged.
LBFGS_MAX_ITER = 5000


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


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (floored at 1e-6; 1 for a single example)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
    return mean, std.clamp_min(1e-6)


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
    mean, std = _moments(x)
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


def fit_logistic_many(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...] = DEFAULT_L2,
    max_iter: int = LBFGS_MAX_ITER,
) -> tuple[list[LinearClassifier], list[bool]]:
    """Converged L2-regularised logistic regression, one per penalty (scikit-learn L-BFGS).

    Minimises ``mean cross-entropy + weight_decay / 2 · ‖W‖²`` on standardised features
    (the bias is not penalised; ``W`` the ``(num_classes, D)`` weight, as for the ``sgd``
    solver), i.e. scikit-learn's ``C = 1 / (weight_decay · N)``. Two classes get
    ``C = 2 / (weight_decay · N)``: scikit-learn fits them with one logit ``z`` and
    penalises ``‖z‖²``, while the optimum over both rows is ``±z / 2``, whose ``‖W‖²`` is
    ``‖z‖² / 2``. Each penalty is solved on its own from zero (gradient tolerance 1e-6), so
    a result does not depend on the rest of the sweep. Classes absent from ``y`` get a
    logit far below the others.

    Args:
        x: ``(N, D)`` features.
        y: ``(N,)`` labels in ``[0, num_classes)``.
        num_classes: outputs.
        weight_decays: L2 penalties, each > 0.
        max_iter: L-BFGS iterations per fit.

    Returns:
        ``(classifiers, converged)`` in the order of ``weight_decays``.

    Raises:
        ConfigError: empty training set or a penalty that is not positive.
    """
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ConfigError(
            "linear probe: the lbfgs solver needs scikit-learn; pip install 'arlkit[eval]'"
        ) from None
    if x.shape[0] == 0:
        raise ConfigError("linear probe: the training split is empty")
    if not weight_decays or min(weight_decays) <= 0:
        raise ConfigError(
            f"linear probe: the lbfgs solver needs L2 penalties > 0, got {weight_decays}"
        )
    n = x.shape[0]
    x, y = x.float(), y.long()
    mean, std = _moments(x)
    xs = ((x - mean) / std).double().numpy()
    labels = y.numpy()
    present = np.unique(labels)
    models: dict[float, tuple[LinearClassifier, bool]] = {}
    for wd in set(weight_decays):
        clf = LinearClassifier(mean, std, num_classes)
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        bias = torch.full((num_classes,), -1e4, dtype=torch.float64)  # absent classes
        converged = True
        if present.size == 1:  # one class: the unpenalised optimum predicts it everywhere
            bias[int(present[0])] = 0.0
        else:
            # two classes: one penalised logit z = w1 - w0 (see the docstring), hence 2 / (wd N)
            scale = 2.0 if present.size == 2 else 1.0
            fit = LogisticRegression(C=scale / (wd * n), tol=1e-6, max_iter=max_iter)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                fit.fit(xs, labels)
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            coef, intercept = torch.from_numpy(fit.coef_), torch.from_numpy(fit.intercept_)
            rows = torch.from_numpy(fit.classes_).long()
            if present.size == 2:  # binary: logit z of the second class; the rows ±z / 2
                weight[rows[0]], bias[rows[0]] = -coef[0] / 2, -intercept[0] / 2
                weight[rows[1]], bias[rows[1]] = coef[0] / 2, intercept[0] / 2
            else:
                weight[rows], bias[rows] = coef, intercept
        with torch.no_grad():
            clf.linear.weight.copy_(weight.float())
            clf.linear.bias.copy_(bias.float())
        models[wd] = (clf.eval(), converged)
    return [models[wd][0] for wd in weight_decays], [models[wd][1] for wd in weight_decays]


def _balanced_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    pred = logits.argmax(1)
    recalls = [(pred[y == c] == c).float().mean().item() for c in torch.unique(y)]
    return float(np.mean(recalls))


@dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        lr: the chosen learning rate (``sgd``; None for ``lbfgs``).
        val_scores: validation balanced accuracy per swept value (learning rate for
            ``sgd``, L2 penalty for ``lbfgs``).
        test_probs: ``(N_test, C)`` class probabilities of the chosen classifier.
        selected_on: ``val``, or ``train`` when the validation split is empty.
        classifier: the chosen classifier.
        solver: ``sgd`` or ``lbfgs``.
        weight_decay: the L2 penalty of the chosen classifier.
        converged: ``lbfgs``: whether the chosen fit converged within its iterations.
    """

    lr: float | None
    val_scores: dict[float, float]
    test_probs: np.ndarray
    selected_on: str
    classifier: LinearClassifier = field(repr=False)
    solver: str = "sgd"
    weight_decay: float = 0.0
    converged: bool = True


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
    solver: Literal["sgd", "lbfgs"] = "sgd",
    weight_decays: tuple[float, ...] | None = None,
) -> LinearProbeResult:
    """Sweep the solver's setting, select on validation, predict the test split.

    Args:
        train_x, train_y: ``(N, D)`` features and ``(N,)`` labels to fit.
        val_x, val_y: validation features and labels (may be empty: then the training
            split selects, which the result records).
        test_x: ``(M, D)`` test features.
        num_classes: number of classes.
        lrs: ``sgd``: learning rates tried.
        epochs, weight_decay, batch_size, seed: ``sgd``: see :func:`train_linear`.
        solver: ``sgd`` sweeps ``lrs``; ``lbfgs`` sweeps the L2 penalties ``weight_decays``
            (default :data:`DEFAULT_L2`) with :func:`fit_logistic_many`.
        weight_decays: ``lbfgs``: L2 penalties tried.

    Returns:
        The :class:`LinearProbeResult`; ties go to the smaller learning rate (``sgd``) or
        the stronger penalty (``lbfgs``).
    """
    sel_x, sel_y, selected_on = (val_x, val_y, "val") if len(val_y) else (train_x, train_y, "train")
    if solver == "lbfgs":
        values = tuple(sorted(weight_decays or DEFAULT_L2, reverse=True))
        models, converged = fit_logistic_many(train_x, train_y, num_classes, values)
    elif solver == "sgd":
        if not lrs:
            raise ConfigError("linear probe: give at least one learning rate")
        values = tuple(sorted(lrs))
        models = train_linear_many(train_x, train_y, num_classes, values, epochs, weight_decay,
                                   batch_size, seed)
        converged = [True] * len(values)
    else:
        raise ConfigError(f"linear probe: unknown solver {solver!r}; choose sgd or lbfgs")
    best = -1
    scores: dict[float, float] = {}
    for k, (value, clf) in enumerate(zip(values, models)):
        with torch.no_grad():
            scores[value] = _balanced_accuracy(clf(sel_x.float()), sel_y)
        if best < 0 or scores[value] > scores[values[best]]:
            best = k
    clf = models[best]
    with torch.no_grad():
        probs = clf(test_x.float()).softmax(-1).numpy()
    if solver == "lbfgs":
        return LinearProbeResult(None, scores, probs, selected_on, clf, solver, values[best],
                                 converged[best])
    return LinearProbeResult(values[best], scores, probs, selected_on, clf, solver, weight_decay)
