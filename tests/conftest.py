"""Shared test set-up: small thread counts keep the suite fast on 2-core machines.

Hypothesis: local runs draw new examples every time (and keep what fails in
``.hypothesis/``); ``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomises the draw, so
the landing gate is reproducible and a rare example cannot fail one CI run but not the next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@dataclass
class Outcome:
    """What ``arlkit ARGS`` did: exit code and captured output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def code(self) -> int:
        return self.returncode

    @property
    def out(self) -> str:
        return self.stdout

    @property
    def err(self) -> str:
        return self.stderr


@pytest.fixture()
def run(capsys, monkeypatch):
    """``run(*ARGS)``: ``arlkit ARGS`` in this process (no interpreter start-up, no import of
    torch per call) → :class:`Outcome`; an exception escaping ``main`` fails the test."""
    from arlkit.cli import main

    monkeypatch.setenv("COLUMNS", "300")  # rich tables: one row per line

    def invoke(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return invoke
