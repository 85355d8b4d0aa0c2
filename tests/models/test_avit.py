"""A-ViT backbone: sizes, input sizes, masking, intermediates, save/reload, timm, registry."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest
import torch

from arlkit.errors import ConfigError, DataError
from arlkit.models.avit import SIZES, AViT, resize_to_patch_multiple

SMALL = {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2}


def _model(seed: int = 0, **kw) -> AViT:
    torch.manual_seed(seed)
    return AViT(**{**SMALL, **kw}).eval()


def _wake(model: AViT) -> AViT:
    """Non-zero offset nets, as after training, so the organ matters."""
    gen = torch.Generator().manual_seed(5)
    for blk in model.blocks:
        with torch.no_grad():
            blk.offset_net.proj.weight.normal_(0, 0.3, generator=gen)
    return model


def test_size_presets_and_attributes() -> None:
    assert SIZES["base"] == (768, 12, 12)  # ViT-B/16
    m = AViT(size="tiny", img_size=64)
    assert (m.embed_dim, m.depth, m.blocks[0].attn.num_heads) == (192, 12, 3)
    assert (m.patch_size, m.in_chans, m.num_prefix_tokens) == (16, 1, 1)
    assert m.blocks[0].offset_groups == 3 and m.blocks[0].deform_weight.shape == (192, 1, 9)
    assert m.taxonomy.num_classes == 16


def test_tiny_runs_at_64_and_224() -> None:
    torch.manual_seed(0)
    m = AViT(size="tiny").eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 1, 64, 64), torch.tensor([11])).shape == (
            1,
            17,
            192,
        )
        assert m.forward_features(torch.randn(1, 1, 224, 224)).shape == (1, 197, 192)
        assert m(torch.randn(1, 1, 64, 64)).shape == (1, 192)


def test_large_scan_after_resizing_rule() -> None:
    m = _model(depth=1, embed_dim=16)
    scan = torch.rand(1, 1, 1000, 750)  # 1280×960-like, not a multiple of 16
    with pytest.raises(DataError, match="resize_to_patch_multiple"):
        m.forward_features(scan)
    fitted = resize_to_patch_multiple(scan, 16)
    assert fitted.shape[-2:] == (1008, 752)
    bounded = resize_to_patch_multiple(torch.rand(1, 1, 1280, 960), 16, max_side=448)
    assert bounded.shape[-2:] == (448, 336)
    with torch.no_grad():
        out = m.forward_features(fitted, torch.tensor([11]))
    assert out.shape == (1, 1 + 63 * 47, 16) and torch.isfinite(out).all()


def test_deformable_at_init_equals_plain_vit_and_organ_matters_after() -> None:
    deform = _model()
    plain = _model(deformable=False)
    plain.load_state_dict(deform.state_dict(), strict=False)
    x = torch.randn(2, 1, 64, 48)
    organ = torch.tensor([0, 11])
    torch.testing.assert_close(deform(x, organ), plain(x))
    _wake(deform)
    same = x[:1].expand(2, -1, -1, -1)
    y = deform(same, organ)
    assert (y[0] - y[1]).abs().max() > 1e-4
    torch.testing.assert_close(deform(x, None), deform(x, torch.tensor([16, 16])))
    unconditioned = _wake(_model(conditioned=False))
    y = unconditioned(same, organ)
    torch.testing.assert_close(y[0], y[1])


def test_save_and_reload_gives_identical_outputs() -> None:
    m = _wake(_model(conditioner=("soft_embedding", {}), pos_embed="sincos"))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = _model(seed=1, conditioner=("soft_embedding", {}), pos_embed="sincos")
    x, organ = torch.randn(2, 1, 32, 48), torch.tensor([3, 7])
    assert not torch.equal(m(x, organ), other(x, organ))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m(x, organ), other(x, organ))


def test_mask_token_and_drop_modes() -> None:
    m = _model()
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 1] = True
    out = m.forward_features(x, mask=mask)
    assert out.shape == (2, 5, 32)
    assert not torch.allclose(out, m.forward_features(x))
    x2 = x.clone()
    x2[..., :16, 16:] = 0  # patch 1 is masked: its content must not matter
    torch.testing.assert_close(out, m.forward_features(x2, mask=mask))

    sparse = _model(deformable=False, mask_mode="drop")
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    out = sparse.forward_features(x, mask=mask)
    assert out.shape == (2, 3, 32)
    full = sparse.forward_features(x, mask=torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close(full, sparse.forward_features(x))
    with pytest.raises(DataError, match="same number"):
        sparse.forward_features(x, mask=torch.tensor([[True] + [False] * 3, [False] * 4]))
    with pytest.raises(ConfigError, match="deformable=False"):
        _model(mask_mode="drop")


def test_forward_intermediates_like_timm() -> None:
    m = _model(depth=3)
    x = torch.randn(2, 1, 32, 48)
    feats = m.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [f.shape for f in feats] == [(2, 32, 2, 3)] * 2
    final, feats = m.forward_intermediates(x, indices=[2], norm=True)
    torch.testing.assert_close(final, m.forward_features(x))
    tokens = final[:, 1:].transpose(1, 2).reshape(2, 32, 2, 3)
    torch.testing.assert_close(feats[0], tokens)
    nlc = m.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    assert nlc[0].shape == (2, 6, 32)


def _timm_vit(img_size: int = 32, **kw):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=img_size, patch_size=16, in_chans=1, embed_dim=32, depth=2, num_heads=2, **kw
    ).eval()


def test_plain_avit_equals_timm_vit_with_the_same_weights() -> None:
    m = _model(deformable=False, img_size=32, num_classes=3)
    vit = _timm_vit(num_classes=3)
    state = {k: v for k, v in m.state_dict().items() if k != "mask_token"}
    vit.load_state_dict(state)  # strict: same names
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(x), vit.forward_features(x))
        torch.testing.assert_close(m(x), vit(x))
        ours = m.forward_intermediates(x, indices=None, norm=True, intermediates_only=True)
        ref = vit.forward_intermediates(x, indices=None, norm=True, intermediates_only=True)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b)
        # another image size: both interpolate the learned position embeddings
        dyn = _timm_vit(num_classes=3, dynamic_img_size=True)
        dyn.load_state_dict(state)
        x = torch.randn(2, 1, 48, 64)
        torch.testing.assert_close(m.forward_features(x), dyn.forward_features(x))


def test_pretrained_file_saved_at_another_size_resamples_position_embeddings(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    import arlkit.models.timm_models  # noqa: F401

    src = timm.create_model("avit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, tmp_path / "b.safetensors")
    m = timm.create_model(
        "avit_tiny_patch16_224",
        depth=1,
        embed_dim=32,
        num_heads=2,
        img_size=64,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(tmp_path / "b.safetensors")},
    )
    ref = checkpoint_filter_fn({"pos_embed": state["pos_embed"]}, _timm_vit(img_size=64))
    assert m.pos_embed.shape == (1, 1 + 4 * 4, 32)
    torch.testing.assert_close(m.pos_embed.detach(), ref["pos_embed"])
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("as_mapping", [False, True])
def test_conditioning_dropout_is_drawn_once_per_image_for_all_blocks(as_mapping: bool) -> None:
    m = _model(depth=3, conditioner=("soft_embedding", {"drop_prob": 0.5})).train()
    dropped = []  # per block: (B,) whether the image got the unknown embedding
    for blk in m.blocks:

        def spy(organ, b, blk=blk, orig=blk.context):
            ctx = orig(organ, b)
            dropped.append((ctx == blk.conditioner.embedding[-1]).all(1))
            return ctx

        blk.context = spy
    organ = torch.full((64,), 3)
    with torch.no_grad():
        m.forward_features(torch.randn(64, 1, 16, 16), {"organ": organ} if as_mapping else organ)
    assert len(dropped) == 3
    assert 0 < int(dropped[0].sum()) < 64
    for other in dropped[1:]:  # a label belongs to the image, not to a block
        assert torch.equal(other, dropped[0])
    dropped.clear()
    with torch.no_grad():
        m.eval().forward_features(torch.randn(64, 1, 16, 16), organ)
    assert not any(bool(d.any()) for d in dropped)


def test_layer_decay_groups_like_timm_vit() -> None:
    from timm.optim import param_groups_layer_decay

    def scales(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
        groups = param_groups_layer_decay(
            model,
            weight_decay=0.05,
            no_weight_decay_list=model.no_weight_decay(),
            layer_decay=0.5,
        )
        names = {id(p): n for n, p in model.named_parameters()}
        return {
            names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]
        }

    ref = scales(_timm_vit(num_classes=3))
    ours = scales(_model(img_size=32, num_classes=3))  # deformable: extra per-block parameters
    assert {n: ours[n] for n in ref} == ref
    for name, got in ours.items():
        if name.startswith("blocks.") and name not in ref:  # offset net, deform weight, ...
            assert got[0] == ref[f"blocks.{name.split('.')[1]}.norm1.weight"][0], name
    assert ours["mask_token"] == ref["cls_token"]


def test_head_and_pooling() -> None:
    m = _model(num_classes=5, global_pool="avg")
    x = torch.randn(2, 1, 32, 32)
    tokens = m.forward_features(x)
    torch.testing.assert_close(m(x), m.head(tokens[:, 1:].mean(1)))
    m.reset_classifier(0, "token")
    torch.testing.assert_close(m(x), tokens[:, 0])


def test_timm_registration_and_light_import() -> None:
    code = (
        "import sys, arlkit.models.timm_models, timm;"
        "assert 'pydantic' not in sys.modules and 'pluggy' not in sys.modules;"
        "print(sorted(timm.list_models('avit_*')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "avit_base_patch16_224" in out.stdout and "avit_tiny_patch16_224" in out.stdout
    import timm

    import arlkit.models.timm_models  # noqa: F401

    m = timm.create_model("avit_tiny_patch16_224", depth=1, num_classes=3, in_chans=3)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert m.pretrained_cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        timm.create_model("avit_small_patch16_224", pretrained=True)


def test_registry_builds_backbone_with_injected_components() -> None:
    from arlkit.registry import default_registries as reg
    from arlkit.taxonomy import Taxonomy

    tax = Taxonomy(("heart", "liver"))
    m = reg.backbones.build(
        "avit",
        {"size": "tiny", "depth": 1, "channel_mixing": "grouped", "kernel_size": 5},
        taxonomy=tax,
        conditioner=("soft_embedding", {"drop_prob": 0.0}),
        deform_op=("torchvision", {}),
        offset_net=("dwconv", {"max_offset": 4.0}),
    )
    blk = m.blocks[0]
    assert blk.conditioner.embedding.shape == (3, 192) and blk.offset_net.max_offset == 4.0
    assert blk.deform_weight.shape == (192, 64, 25) and m.taxonomy is tax
    assert m(torch.randn(1, 1, 32, 32), torch.tensor([1])).shape == (1, 192)
    with pytest.raises(ValueError):
        reg.backbones.build(
            "avit",
            {"sise": "tiny"},
            taxonomy=tax,
            conditioner=("onehot", {}),
            deform_op=("reference", {}),
            offset_net=("dwconv", {}),
        )


def test_viz_offsets_writes_png(tmp_path) -> None:
    from arlkit.cli import viz

    parser = argparse.ArgumentParser()
    viz.register(parser.add_subparsers())
    out = tmp_path / "offsets.png"
    args = parser.parse_args(
        [
            "viz",
            "offsets",
            "random",
            "--size",
            "tiny",
            "--depth",
            "1",
            "--img-size",
            "64",
            "--organ",
            "cardiac",
            "--vs",
            "breast",
            "--out",
            str(out),
        ]
    )
    assert args.handler(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"model": {f"backbone.{k}": v for k, v in AViT(size="tiny", depth=1).state_dict().items()}},
        ckpt,
    )
    out.unlink()
    args = parser.parse_args(
        [
            "viz",
            "offsets",
            str(ckpt),
            "--size",
            "tiny",
            "--depth",
            "1",
            "--img-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert args.handler(args) == 0 and out.exists()
    args.depth = 2  # the checkpoint has one block: a clear error, not a silent partial load
    with pytest.raises(DataError, match="no A-ViT state dict"):
        args.handler(args)


def test_viz_offsets_reads_an_arlkit_export(tmp_path, heart_liver_export) -> None:
    from arlkit.cli import viz

    path, _ = heart_liver_export
    parser = argparse.ArgumentParser()
    viz.register(parser.add_subparsers())
    out = tmp_path / "o.png"
    args = parser.parse_args(
        [
            "viz",
            "offsets",
            path,
            "--organ",
            "heart",
            "--vs",
            "liver",
            "--img-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert args.handler(args) == 0 and out.exists()
    bad = parser.parse_args(
        [
            "viz",
            "offsets",
            "random",
            "--organ",
            "hart",
            "--size",
            "tiny",
            "--depth",
            "1",
            "--img-size",
            "32",
            "--out",
            str(out),
        ]
    )
    with pytest.raises(ValueError, match="did you mean 'heart'|unknown organ"):
        bad.handler(bad)
