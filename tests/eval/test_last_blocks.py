"""DINO's ``n_last_blocks`` features: the last blocks' class tokens (and the mean patch token)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from eval_helpers import tiny_backbone

from arlkit.errors import ConfigError
from arlkit.eval.features import extract_features, pool_blocks, pool_tokens


def test_pool_blocks_by_hand() -> None:
    a = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B, 1+N, C)
    b = a + 100
    assert torch.equal(pool_blocks([a, b], 1, "cls"), torch.cat([a[:, 0], b[:, 0]], -1))
    assert torch.equal(pool_blocks([a, b], 1, "avg"),
                       torch.cat([a[:, 1:].mean(1), b[:, 1:].mean(1)], -1))
    # DINO: the class tokens of every block, the mean patch token of the last one only
    assert torch.equal(pool_blocks([a, b], 1, "cls+avg"),
                       torch.cat([a[:, 0], b[:, 0], b[:, 1:].mean(1)], -1))
    for pool in ("cls", "avg", "cls+avg"):  # one block is the usual pooling
        assert torch.equal(pool_blocks([b], 1, pool), pool_tokens(b, 1, pool))
    with pytest.raises(ConfigError):
        pool_blocks([a, b], 1, "max")
    with pytest.raises(ConfigError):
        pool_blocks([], 1, "cls")


def test_last_blocks_features_extend_the_final_tokens() -> None:
    from arlkit.data.synthetic import SyntheticTask

    model = tiny_backbone(seed=3)  # 2 blocks, 32 wide
    data = SyntheticTask("breast", 4, size=32)
    one = extract_features(model, data, pool="cls+avg", batch_size=4).features  # (4, 64)
    two = extract_features(model, data, pool="cls+avg", batch_size=4, n_last_blocks=2).features
    assert one.shape == (4, 64) and two.shape == (4, 96)
    # the last block's class token and the mean patch token are those of the final tokens
    assert torch.allclose(two[:, 32:], one, atol=1e-5)
    # the first block's class token is that block's output through the final norm
    with torch.no_grad():
        images = torch.stack([data[i]["image"] for i in range(4)]).float()
        organ = torch.tensor([data[i]["organ"] for i in range(4)])
        inter = model.forward_intermediates(images, organ, indices=[0], norm=True,
                                            output_fmt="NLC", intermediates_only=True)[0]
    avg = extract_features(model, data, pool="avg", batch_size=4, n_last_blocks=2).features
    assert torch.allclose(avg[:, :32], inter.mean(1), atol=1e-5)
    assert not torch.allclose(two[:, :32], two[:, 32:64])
    with pytest.raises(ConfigError, match="2 blocks"):
        extract_features(model, data, batch_size=4, n_last_blocks=3)
    with pytest.raises(ConfigError):
        extract_features(model, data, batch_size=4, n_last_blocks=0)
    assert not any(blk._forward_hooks for blk in model.blocks)  # hooks removed


def test_last_blocks_of_a_timm_vit() -> None:
    from arlkit.eval.backbones import resolve_backbone

    model = resolve_backbone("timm:vit_tiny_patch16_224", seed=0).model
    data = [{"image": torch.rand(1, 32, 32), "organ": 0, "label": i % 2} for i in range(3)]
    feats = extract_features(model, data, pool="cls", batch_size=3, n_last_blocks=4).features
    final = extract_features(model, data, pool="cls", batch_size=3).features
    assert feats.shape == (3, 4 * 192)
    assert torch.allclose(feats[:, -192:], final, atol=1e-5)


def test_run_eval_records_and_caches_n_last_blocks(tiny_export: str, tmp_path: pathlib.Path) -> None:
    from arlkit.eval.run import EvalConfig, run_eval

    common = dict(protocol="linear", backbone=tiny_export, data="synthetic:breast", image_size=32,
                  n_train=16, n_val=8, n_test=16, n_boot=20, device="cpu", epochs=5,
                  cache_dir=str(tmp_path / "cache"))
    run_eval(EvalConfig(**common, out=str(tmp_path / "one")))
    run_eval(EvalConfig(**common, n_last_blocks=2, out=str(tmp_path / "two")))
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert settings["config"]["n_last_blocks"] == 2
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 6  # 3 splits each
    with pytest.raises(ConfigError, match="n-last-blocks"):
        run_eval(EvalConfig(**common, n_last_blocks=0, out=str(tmp_path / "bad")))

