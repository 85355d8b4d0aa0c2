"""How long the linear probe trains: epochs, steps, and the minimum for small splits."""

from __future__ import annotations

import math

from arlkit.eval.config import MIN_LINEAR_STEPS
from arlkit.eval.protocols import _linear_epochs


def test_default_gives_small_splits_at_least_the_minimum_steps():
    # 400 examples are 2 batches of 256: 100 epochs would be 200 steps
    epochs = _linear_epochs(None, None, 400)
    assert epochs * 2 >= MIN_LINEAR_STEPS
    assert epochs == math.ceil(MIN_LINEAR_STEPS / 2)


def test_default_keeps_100_epochs_for_large_splits():
    n = 256 * MIN_LINEAR_STEPS  # 100 epochs are far more than the minimum
    assert _linear_epochs(None, None, n) == 100


def test_explicit_epochs_and_steps_win():
    assert _linear_epochs(7, None, 400) == 7
    assert _linear_epochs(7, 10, 400) == 5  # steps win over epochs: 10 steps of 2 batches
    assert _linear_epochs(None, 1, 10_000) == 1
