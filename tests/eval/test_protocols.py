"""The protocol runners: what the feature cache may and may not re-use."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from arlkit.eval.run import EvalConfig, run_eval


def _patient_manifest(tmp_path: pathlib.Path, n: int = 24) -> str:
    """A labelled manifest without a split column: split at random by ``--seed``."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"path": f"im{i}.png", "organ": "breast", "label": str(i % 2),
                     "patient_id": f"p{i // 2}"})
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_cached_features_follow_the_seeded_split(tiny_export: str, tmp_path: pathlib.Path) -> None:
    """Another --seed splits a manifest into other rows of the same sizes: the cache must not
    hand back the features (and labels) of the first seed's split."""
    common = dict(protocol="knn", backbone=tiny_export, data=_patient_manifest(tmp_path),
                  image_size=32, n_boot=0, device="cpu", batch_size=24)
    cache = str(tmp_path / "cache")
    run_eval(EvalConfig(**common, seed=0, cache_dir=cache, out=str(tmp_path / "seed0")))
    cached = run_eval(EvalConfig(**common, seed=1, cache_dir=cache, out=str(tmp_path / "seed1")))
    fresh = run_eval(EvalConfig(**common, seed=1, cache_dir=None, out=str(tmp_path / "fresh")))
    assert cached["sizes"] == fresh["sizes"]
    values = {name: v["value"] for name, v in cached["metrics"]["1"].items()}
    assert values == {name: v["value"] for name, v in fresh["metrics"]["1"].items()}
    assert len(list(pathlib.Path(cache).glob("features-*.safetensors"))) == 6  # 3 splits per seed


def _timm_backbone(mean: float, std: float):
    """One timm ViT (same seed, same weights) whose input normalisation is ``mean``/``std``,
    as the ``pretrained_cfg`` of ``vit_small_patch16_224`` vs ``vit_small_patch16_224.dino``."""
    import timm
    import torch

    from arlkit.eval.backbones import ResolvedBackbone, TimmBackbone

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0,
                              depth=1, dynamic_img_size=True,
                              pretrained_cfg_overlay={"mean": (mean,), "std": (std,)})
    return ResolvedBackbone(TimmBackbone(model).eval(), "vit", "timm", "timm:vit_tiny_patch16_224")


def test_cached_features_follow_a_timm_backbones_input_normalisation(tmp_path: pathlib.Path) -> None:
    """The weights (state dict) are the same, the input mean/std (unsaved buffers) are not: the
    features differ, so the second backbone must not read the first one's cache entries."""
    import torch

    from arlkit.eval.backbones import backbone_fingerprint

    first, second = _timm_backbone(0.5, 0.5), _timm_backbone(0.45, 0.22)
    assert backbone_fingerprint(first.model) == backbone_fingerprint(second.model)
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(first.model.forward_features(images),
                                  second.model.forward_features(images))
    common = dict(protocol="linear", backbone="timm:vit_tiny_patch16_224", data="synthetic:breast",
                  image_size=32, n_train=16, n_val=8, n_test=16, n_boot=0, device="cpu",
                  batch_size=16, steps=20)
    cache = str(tmp_path / "cache")
    run_eval(EvalConfig(**common, cache_dir=cache, out=str(tmp_path / "first")), first)
    cached = run_eval(EvalConfig(**common, cache_dir=cache, out=str(tmp_path / "second")), second)
    fresh = run_eval(EvalConfig(**common, cache_dir=None, out=str(tmp_path / "fresh")), second)
    assert len(list(pathlib.Path(cache).glob("features-*.safetensors"))) == 6  # 3 splits each
    assert cached["details"] == fresh["details"]  # the learning-rate sweep's validation scores
    values = {name: v["value"] for name, v in cached["metrics"]["1"].items()}
    assert values == {name: v["value"] for name, v in fresh["metrics"]["1"].items()}
