"""Fixtures of the evaluation tests (helpers: ``eval_helpers``)."""

from __future__ import annotations

import pathlib

import pytest
import torch
from eval_helpers import SMALL, tiny_backbone, tiny_config


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An exported tiny A-ViT (``arlkit export`` format)."""
    from arlkit.engine.export import export_backbone

    path = tmp_path_factory.mktemp("export") / "tiny.safetensors"
    model = tiny_backbone(seed=123)
    # a non-zero offset network makes the organ condition matter, as after training
    for name, p in model.named_parameters():
        if "offset" in name:
            torch.nn.init.normal_(p, std=0.05)
    return export_backbone(model, tiny_config(), str(path))


@pytest.fixture()
def small_args(tmp_path: pathlib.Path) -> list[str]:
    return [*SMALL, "--cache-dir", str(tmp_path / "cache")]
