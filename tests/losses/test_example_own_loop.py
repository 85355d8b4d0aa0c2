"""examples/losses_in_your_own_loop.py runs and trains both players."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "losses_in_your_own_loop.py"


def _load():
    spec = importlib.util.spec_from_file_location("losses_in_your_own_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trains_for_a_few_steps() -> None:
    history = _load().main(steps=6, batch=4, gan_start=3)
    assert [row["step"] for row in history] == list(range(6))
    assert all(math.isfinite(v) for row in history for v in row.values())
    # warm-up: no adversarial term, no discriminator loss, λ reported as 0
    assert all(r["adv"] == 0.0 and r["disc"] == 0.0 and r["lambda"] == 0.0 for r in history[:3])
    # afterwards: an adaptive λ > 0 and total = mim + λ·adv
    for r in history[3:]:
        assert 0.0 < r["lambda"] <= 10.0 and r["adv"] > 0.0 and r["disc"] > 0.0
        assert r["total"] == pytest.approx(r["mim"] + r["lambda"] * r["adv"], rel=1e-5)


def test_example_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "2", "--batch", "2", "--gan-start", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "step=1" in out.stdout and "lambda=" in out.stdout
