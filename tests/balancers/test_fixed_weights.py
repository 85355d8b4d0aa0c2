"""FixedWeights returns its weights and the weighted sum."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.balancers import FixedWeights
from arlkit.errors import ConfigError


@given(
    w_adv=st.floats(0, 10),
    w_sd=st.floats(0, 10),
    default=st.floats(0, 10),
    values=st.lists(st.floats(-100, 100), min_size=3, max_size=3),
)
@settings(max_examples=30, deadline=None)
def test_returns_its_weights_and_weighted_sum(w_adv, w_sd, default, values) -> None:
    names = ["mim", "speckle_gan", "self_distillation"]
    losses = {n: torch.tensor(v, dtype=torch.float64) for n, v in zip(names, values)}
    bal = FixedWeights({"speckle_gan": w_adv, "self_distillation": w_sd}, default=default)
    total, weights = bal(losses)
    assert weights == {
        "mim": default,
        "speckle_gan": w_adv,
        "self_distillation": w_sd,
        "lambda": w_adv,
    }
    expected = default * values[0] + w_adv * values[1] + w_sd * values[2]
    assert total.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_gradient_is_weighted() -> None:
    p = torch.tensor(2.0, requires_grad=True)
    total, _ = FixedWeights({"b": 0.5})({"a": p**2, "b": 3 * p}, p)
    total.backward()
    assert p.grad.item() == pytest.approx(2 * 2.0 + 0.5 * 3)


def test_lambda_zero_when_adaptive_absent_and_state_is_empty() -> None:
    _, weights = FixedWeights({"speckle_gan": 0.1})({"mim": torch.tensor(1.0)})
    assert weights == {"mim": 1.0, "lambda": 0.0}
    assert FixedWeights().state_dict() == {}


def test_bad_weights_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="'mim'"):
        FixedWeights({"mim": -1.0})
    with pytest.warns(UserWarning, match="mimm"):
        FixedWeights({"mimm": 1.0})({"mim": torch.tensor(1.0)})
