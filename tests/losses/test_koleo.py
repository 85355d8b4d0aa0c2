"""KoLeo regulariser against hand computations and brute force; its gradient spreads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.errors import ConfigError
from arlkit.losses import KoLeoLoss, koleo_loss


def test_hand_computed_on_the_unit_circle() -> None:
    """Points at 0°, 90° and 100°: nearest neighbours are 90°↔100° (chord 2 sin 5°) and
    0°→90° (chord √2)."""
    angles = torch.tensor([0.0, 90.0, 100.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[3.0], [0.5], [2.0]])
    near = 2 * math.sin(math.radians(5))
    expected = -(math.log(math.sqrt(2)) + 2 * math.log(near)) / 3
    assert koleo_loss(x, eps=0.0).item() == pytest.approx(expected, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_equals_brute_force_nearest_neighbour(b: int, c: int, seed: int) -> None:
    x = torch.randn(b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(u, u) + torch.diag(torch.full((b,), math.inf, dtype=torch.float64))
    expected = -(d.min(dim=1).values + 1e-8).log().mean()
    assert koleo_loss(x).item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)


def test_a_gradient_step_spreads_the_closest_pair() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    x[1] = x[0] + 0.01 * torch.randn(4, generator=g)  # a near-duplicate
    x.requires_grad_(True)
    before = koleo_loss(x)
    before.backward()
    with torch.no_grad():
        y = x - 0.05 * x.grad
        gap = lambda z: (z[0] / z[0].norm() - z[1] / z[1].norm()).norm().item()  # noqa: E731
        assert gap(y) > gap(x)
        assert koleo_loss(y).item() < before.item()


def test_views_search_neighbours_within_each_view() -> None:
    g = torch.Generator().manual_seed(1)
    view0 = torch.randn(4, 3, generator=g)
    view1 = view0 + 1e-3 * torch.randn(4, 3, generator=g)  # each image's closest is itself
    x = torch.cat([view0, view1])
    by_view = KoLeoLoss(views=2)(x)
    assert by_view.item() == pytest.approx(((koleo_loss(view0) + koleo_loss(view1)) / 2).item())
    assert by_view.item() < koleo_loss(x).item()  # across views the copies would be neighbours


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="B >= 2"):
        koleo_loss(torch.randn(1, 3))
    with pytest.raises(ConfigError, match="views=2"):
        KoLeoLoss(views=2)(torch.randn(5, 3))
    with pytest.raises(ConfigError, match="views must be"):
        KoLeoLoss(views=0)
