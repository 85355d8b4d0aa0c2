"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
from toy_recipes import toy_overrides


@pytest.fixture()
def toy(tmp_path):
    """``toy(recipe, steps=2, **overrides)`` → overrides that shrink a shipped recipe."""
    return lambda recipe, steps=2, **extra: toy_overrides(tmp_path, recipe, steps, **extra)
