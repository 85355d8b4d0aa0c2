"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
from toy_recipes import toy_overrides


@pytest.fixture()
def toy(tmp_path):
    """``toy(recipe, steps=2, **overrides)`` → overrides that shrink a shipped recipe."""
    return lambda recipe, steps=2, **extra: toy_overrides(tmp_path, recipe, steps, **extra)


@pytest.fixture()
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: runs get a Ctrl-C during step ``n``, as the SIGINT handler does
    (finish the step, checkpoint, stop with exit code 130); ``interrupt_at(None)`` undoes it."""
    import signal

    from arlkit.engine.trainer import Trainer

    original = Trainer._train_step

    def arm(step: int | None) -> None:
        if step is None:
            monkeypatch.setattr(Trainer, "_train_step", original)
            return

        def train_step(self, micro_batches):
            logs = original(self, micro_batches)
            if self.step + 1 == step:  # self.step counts the finished steps
                self._on_sigint(signal.SIGINT, None)
            return logs

        monkeypatch.setattr(Trainer, "_train_step", train_step)

    return arm
