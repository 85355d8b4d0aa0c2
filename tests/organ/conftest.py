"""A small synthetic multi-organ set and an export shared by the organ tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from organ_helpers import tiny_backbone, tiny_config

from arlkit.data.synthetic import SyntheticUltrasound
from arlkit.engine.export import export_backbone
from arlkit.organ import stack_samples


@pytest.fixture(scope="session")
def organ_data() -> tuple[torch.Tensor, torch.Tensor]:
    """320 synthetic 32-px images over the 16 organs, and their organ indices."""
    return stack_samples(SyntheticUltrasound(size=32, length=320, seed=0))


@pytest.fixture
def export_file(tmp_path: Any) -> str:
    model = tiny_backbone()
    return export_backbone(model, tiny_config(), str(tmp_path / "tiny.safetensors"))
