"""The synthetic task labels are real: a small CNN learns them, mean intensity does not.

Each task: 256 training and 128 test images (disjoint splits), a 4-layer CNN trained for
a few hundred Adam steps on one CPU thread, fixed seeds. Local findings (gallbladder
polyps) need 96 pixels; the rest run at 64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arlkit.data.synthetic import SyntheticTask

CASES = [  # task, image size, training steps
    ("breast", 64, 200),
    ("thyroid", 64, 200),
    ("gallbladder", 96, 300),
    ("lung", 64, 200),
    ("cardiac_view", 64, 200),
]


def _load(task: str, split: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticTask(task, n, split=split, size=size, seed=0)
    images = torch.stack([data[i]["image"] for i in range(n)])
    return images, torch.tensor(data.labels)


def mean_intensity_accuracy(xtr, ytr, xte, yte) -> float:
    """Test accuracy of the best classifier of the mean grey level (fitted on train).

    Two classes: the best threshold and direction. More: a Gaussian per class.
    """
    ftr, fte = xtr.mean((1, 2, 3)), xte.mean((1, 2, 3))
    classes = int(ytr.max()) + 1
    if classes == 2:
        best, rule = -1.0, (0.0, 1.0)
        for threshold in ftr.unique():
            for sign in (1.0, -1.0):
                acc = ((sign * (ftr - threshold) > 0).long() == ytr).float().mean().item()
                if acc > best:
                    best, rule = acc, (threshold, sign)
        return ((rule[1] * (fte - rule[0]) > 0).long() == yte).float().mean().item()
    mu = torch.stack([ftr[ytr == k].mean() for k in range(classes)])
    sd = torch.stack([ftr[ytr == k].std() for k in range(classes)])
    loglik = -0.5 * ((fte[:, None] - mu) / sd) ** 2 - sd.log()
    return (loglik.argmax(1) == yte).float().mean().item()


class SmallCNN(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, 32, H/8, W/8)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


def cnn_accuracy(xtr, ytr, xte, yte, steps: int) -> float:
    torch.manual_seed(0)
    net = SmallCNN(int(ytr.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (32,), generator=gen)
        loss = nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return (net(xte).argmax(1) == yte).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize(("task", "size", "steps"), CASES, ids=[c[0] for c in CASES])
def test_task_is_learnable_but_not_from_mean_intensity(task: str, size: int, steps: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xtr, ytr = _load(task, "train", 256, size)
        xte, yte = _load(task, "test", 128, size)
        classes = int(ytr.max()) + 1
        chance = 1 / classes
        by_mean = mean_intensity_accuracy(xtr, ytr, xte, yte)
        by_cnn = cnn_accuracy(xtr, ytr, xte, yte, steps)
    finally:
        torch.set_num_threads(threads)
    assert by_mean < chance + 0.2, f"{task}: mean intensity alone gives {by_mean:.2f}"
    assert by_cnn >= 0.85, f"{task}: the CNN only reaches {by_cnn:.2f}"
    assert by_cnn > by_mean + 0.3
