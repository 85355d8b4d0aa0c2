"""Shared test set-up: small thread counts keep the suite fast on 2-core machines.

Hypothesis: local runs draw new examples every time (and keep what fails in
``.hypothesis/``); ``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomises the draw, so
the landing gate is reproducible and a rare example cannot fail one CI run but not the next.
"""

from __future__ import annotations

import os

import torch
from hypothesis import settings

torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
