"""What a wrong organ label costs: corrupt a fraction of labels at test time, measure the drop.

A linear probe is fitted on features computed with the *true* labels; at test time a
given fraction of the organ labels is replaced by a different, random organ, and the
accuracy drop is reported per conditioning mode:

- ``onehot`` / ``soft_embedding``: the backbone gets the (possibly wrong) label;
- ``auto``: the backbone gets the organ head's probabilities, so a wrong label cannot
  reach it (its drop is measured against its own clean score with the true label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError

__all__ = ["RobustnessRow", "corrupt_labels", "fit_probe", "robustness_row"]


def corrupt_labels(
    organ: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Replace ``round(fraction·N)`` labels, chosen at random, by a different random organ.

    Args:
        organ: ``(N,)`` organ indices in ``[0, K]`` (``K``: ``unknown``; a chosen unknown
            row gets an organ drawn uniformly from all ``K``).
        fraction: share of labels to corrupt, in ``[0, 1]``.
        num_classes: ``K``.
        generator: random source.

    Returns:
        ``(N,)`` corrupted copy; exactly ``round(fraction·N)`` entries differ from ``organ``.

    Raises:
        ConfigError: fraction outside ``[0, 1]`` or fewer than two classes.
    """
    if not 0.0 <= fraction <= 1.0 or num_classes < 2:
        raise ConfigError(
            f"robustness: need 0 <= fraction <= 1 and 2+ organs, got {fraction}, {num_classes}"
        )
    n = organ.shape[0]
    out = organ.clone()
    rows = torch.randperm(n, generator=generator)[: round(fraction * n)]
    shift = torch.randint(1, num_classes, (rows.numel(),), generator=generator)
    wrong = (organ[rows] + shift) % num_classes  # a shift of 1..K-1 never lands on itself
    # an unknown row (index K) has no organ to avoid: K + shift would skip organ 0
    unknown = organ[rows] >= num_classes
    if bool(unknown.any()):
        wrong[unknown] = torch.randint(0, num_classes, (int(unknown.sum()),), generator=generator)
    out[rows] = wrong
    return out


def fit_probe(
    feats: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 0.05
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Full-batch softmax regression on standardised features; returns ``predict(feats) -> (N,)``."""
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    torch.manual_seed(0)
    fc = nn.Linear(feats.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(fc.parameters(), lr=lr, weight_decay=1e-4)
    x = (feats - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(fc(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return lambda f: fc((f - mean) / std).argmax(-1).detach()


@dataclass
class RobustnessRow:
    """Accuracy of one conditioning mode with clean and corrupted test labels."""

    mode: str
    clean: float
    corrupted: float

    @property
    def drop(self) -> float:
        return self.clean - self.corrupted


@torch.no_grad()
def _feats(backbone: nn.Module, x: torch.Tensor, organ: object) -> torch.Tensor:
    return backbone.forward_features(x, organ)[:, 0].float()


def robustness_row(
    mode: str,
    backbone: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    fraction: float,
    seed: int = 0,
) -> RobustnessRow:
    """Probe accuracy of ``backbone`` with true vs corrupted organ labels on the test set.

    Args:
        mode: ``onehot``, ``soft_embedding`` (labels are fed) or ``auto`` (``backbone`` is an
            :class:`~arlkit.organ.auto.AutoOrganBackbone`; the corrupted labels are ignored).
        backbone: the model.
        train, test: ``(images (N, 1, H, W), organ (N,), target (N,))``.
        fraction: share of test organ labels to corrupt.
        seed: corruption seed.

    Returns:
        The :class:`RobustnessRow`.
    """
    gen = torch.Generator().manual_seed(seed)
    k = backbone.taxonomy.num_classes
    x_tr, o_tr, y_tr = train
    x_te, o_te, y_te = test
    probe = fit_probe(_feats(backbone, x_tr, "auto" if mode == "auto" else o_tr), y_tr)
    wrong = corrupt_labels(o_te, fraction, k, gen)
    clean_in = "auto" if mode == "auto" else o_te
    bad_in = "auto" if mode == "auto" else wrong
    acc = [float((probe(_feats(backbone, x_te, o)) == y_te).float().mean())
           for o in (clean_in, bad_in)]
    return RobustnessRow(mode, acc[0], acc[1])
