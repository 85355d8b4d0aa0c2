"""Weighted k-nearest-neighbour classification of frozen features (DINO's kNN evaluation).

Features are L2-normalised; each test example takes its ``k`` most cosine-similar training
examples and votes for their classes with weights ``exp(similarity / T)``. The normalised
votes are the class probabilities (so AUROC is defined as for the linear probe); the
weights are computed relative to the nearest neighbour's, which leaves these probabilities
unchanged and keeps them finite at any temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError

__all__ = ["knn_classify"]


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class probabilities of ``test_x`` from temperature-weighted votes of its neighbours.

    Args:
        train_x: ``(N, D)`` training features.
        train_y: ``(N,)`` labels in ``[0, num_classes)``.
        test_x: ``(M, D)`` features to classify.
        num_classes: number of classes.
        k: neighbours (capped at N, as a 1%-label split may hold fewer).
        temperature: softness of the votes (DINO: 0.07).
        chunk: test rows per similarity block (bounds memory at ``chunk × N``).

    Returns:
        ``(M, num_classes)`` probabilities (rows sum to 1).

    Raises:
        ConfigError: empty training set, ``k < 1`` or a non-positive temperature.
    """
    if train_x.shape[0] == 0:
        raise ConfigError("kNN: the training split is empty")
    if k < 1 or temperature <= 0:
        raise ConfigError(f"kNN: need k >= 1 and temperature > 0, got k={k}, T={temperature}")
    k = min(k, train_x.shape[0])
    bank = F.normalize(train_x.float(), dim=1)  # (N, D)
    onehot = F.one_hot(train_y.long(), num_classes).float()  # (N, C)
    out = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start : start + chunk].float(), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k), sorted: sim[:, 0] is the largest
        # exp((s - s_max) / T): the same normalised votes as exp(s / T), which overflows
        # float32 once 1 / T > 88 (T < 0.0113) and would turn the probabilities into NaN
        weights = ((sim - sim[:, :1]) / temperature).exp()  # (m, k)
        votes = (weights[..., None] * onehot[idx]).sum(1)  # (m, k, C) -> (m, C)
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out) if out else torch.zeros(0, num_classes)
