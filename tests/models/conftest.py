"""Fixtures of the model tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def heart_liver_export(tmp_path) -> tuple[str, dict]:
    """An ``arlkit export`` of a one-block tiny A-ViT with a two-organ taxonomy (heart,
    liver) and a soft-embedding conditioner: ``(path, its configuration)``."""
    from arlkit.engine import export

    config = {
        "backbone": {"name": "avit", "params": {"size": "tiny", "depth": 1, "img_size": 32}},
        "conditioner": {"name": "soft_embedding", "params": {}},
        "deform_op": {"name": "reference", "params": {}},
        "offset_net": {"name": "dwconv", "params": {}},
        "taxonomy": ["heart", "liver"],
    }
    path = str(tmp_path / "backbone.safetensors")
    export.export_backbone(export.build_backbone(config), config, path)
    return path, config
