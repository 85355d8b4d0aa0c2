"""Shared test set-up: small thread counts keep the suite fast on 2-core machines."""

from __future__ import annotations

import os

import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
