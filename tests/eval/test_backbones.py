"""--backbone forms: export, run directory, random, timm; the feature cache."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import yaml
from eval_helpers import run_cli, tiny_backbone, tiny_config

from arlkit.errors import ArlkitError, ConfigError
from arlkit.eval.backbones import TimmBackbone, backbone_fingerprint, resolve_backbone
from arlkit.eval.features import cached_features, extract_features, pool_tokens


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_file(tiny_export: str) -> None:
    from arlkit.engine.export import load_backbone

    bb = resolve_backbone(tiny_export)
    assert bb.kind == "export" and bb.name == "tiny"
    assert _same_weights(bb.model, load_backbone(tiny_export))


def _run_dir(tmp_path: pathlib.Path, teacher: torch.nn.Module, student: torch.nn.Module) -> str:
    from arlkit.engine.checkpoint import write_checkpoint

    cfg = tiny_config()
    recipe = {
        "name": "tiny", "objectives": [{"name": "mim"}],
        "model": {k: cfg[k] for k in ("backbone", "conditioner", "deform_op", "offset_net")},
        "data": {"dataset": {"name": "manifest", "params": {"path": "unused.csv"}}},
    }
    run = tmp_path / "tiny-run"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    tensors = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    tensors.update({f"student.backbone.{k}": v for k, v in student.state_dict().items()})
    write_checkpoint(str(run), 7, tensors, {"step": 7})
    return str(run)


def test_run_directory_gives_the_teacher(tmp_path: pathlib.Path) -> None:
    teacher, student = tiny_backbone(seed=1), tiny_backbone(seed=2)
    bb = resolve_backbone(_run_dir(tmp_path, teacher, student))
    assert bb.kind == "run" and bb.info["weights"] == "teacher" and bb.info["step"] == 7
    assert _same_weights(bb.model, teacher)
    assert not _same_weights(bb.model, student)


def test_run_directory_without_checkpoint(tmp_path: pathlib.Path) -> None:
    run = pathlib.Path(_run_dir(tmp_path, tiny_backbone(), tiny_backbone()))
    import shutil

    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ArlkitError, match="no complete checkpoint"):
        resolve_backbone(str(run))
    with pytest.raises(ConfigError, match="not an arlkit run"):
        resolve_backbone(str(tmp_path))


def test_random_is_seeded_and_needs_an_architecture(tiny_export: str, tmp_path: pathlib.Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a = resolve_backbone("random", arch=tiny_export, seed=3)
    b = resolve_backbone("random", arch=tiny_export, seed=3)
    c = resolve_backbone("random", arch=tiny_export, seed=4)
    assert a.name == "random" and _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)
    assert not _same_weights(a.model, resolve_backbone(tiny_export).model)
    monkeypatch.chdir(tmp_path)  # no recipes/quickstart.yaml here
    with pytest.raises(ConfigError, match="recipes/quickstart.yaml.*--arch"):
        resolve_backbone("random")


def test_random_with_its_own_seed_leaves_the_protocol_seed_alone(
        tiny_export: str, small_args: list[str], tmp_path: pathlib.Path) -> None:
    # random:N is random initialised from N whatever --seed says; random follows --seed
    r4 = resolve_backbone("random:4", arch=tiny_export, seed=0)
    assert r4.name == "random-4" and r4.info["seed"] == 4
    assert _same_weights(r4.model, resolve_backbone("random", arch=tiny_export, seed=4).model)
    assert not _same_weights(r4.model, resolve_backbone("random", arch=tiny_export, seed=0).model)
    for bad in ("random:", "random:-1", "random:one"):
        with pytest.raises(ConfigError, match=f"--backbone {bad}: the initialisation seed must"):
            resolve_backbone(bad, arch=tiny_export)
    # through the command: same protocol seed (label subset, probe) as the pretrained backbone
    argv = ["eval", "knn", "--arch", tiny_export, "--data", "synthetic:breast",
            "--label-fraction", "0.5", *small_args]
    assert run_cli([*argv, "--backbone", "random:4", "--out", str(tmp_path / "a")]) == 0
    assert run_cli([*argv, "--backbone", "random", "--seed", "4", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "settings.json").read_text())
    b = json.loads((tmp_path / "b" / "settings.json").read_text())
    assert a["backbone"]["fingerprint"] == b["backbone"]["fingerprint"]
    assert a["seeds"]["protocol"] == 0 and b["seeds"]["protocol"] == 4


def test_missing_path_and_unknown_timm_name() -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        resolve_backbone("/nonexistent/backbone.safetensors")
    with pytest.raises(ConfigError, match="did you mean 'vit_tiny_patch16_224'"):
        resolve_backbone("timm:vit_tiny_patch16_22")
    with pytest.raises(ConfigError, match="weights file"):
        resolve_backbone("timm:vit_tiny_patch16_224:/nonexistent.safetensors")


def test_timm_with_local_three_channel_weights(tmp_path: pathlib.Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=2)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    # the file's depth must match: a 2-block model is built through timm kwargs here
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0,
                              depth=2, dynamic_img_size=True)
    from arlkit.eval.timm_backbone import load_timm_weights

    load_timm_weights(model, str(path), "timm:test")
    # 3 -> 1 channel: timm sums the RGB filters
    expect = rgb.patch_embed.proj.weight.sum(1, keepdim=True)
    assert torch.allclose(model.patch_embed.proj.weight, expect, atol=1e-6)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, rgb.blocks[1].mlp.fc1.weight)
    wrapped = TimmBackbone(model)
    x = torch.rand(2, 1, 32, 48)
    assert wrapped.forward_features(x, organ=torch.tensor([0, 1])).shape == (2, 1 + 2 * 3, 192)
    levels = wrapped.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert [t.shape for t in levels] == [(2, 192, 2, 3)] * 2
    assert wrapped.patch_size == 16 and wrapped.num_prefix_tokens == 1


def test_timm_model_name_resolves_without_weights() -> None:
    bb = resolve_backbone("timm:vit_tiny_patch16_224", seed=0)
    assert isinstance(bb.model, TimmBackbone) and bb.model.embed_dim == 192


def test_fingerprint_tracks_weights() -> None:
    a, b = tiny_backbone(seed=0), tiny_backbone(seed=0)
    assert backbone_fingerprint(a) == backbone_fingerprint(b)
    with torch.no_grad():
        b.cls_token.add_(1e-3)
    assert backbone_fingerprint(a) != backbone_fingerprint(b)


def test_pooling() -> None:
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B, 1+N, C)
    assert torch.equal(pool_tokens(tokens, 1, "cls"), tokens[:, 0])
    assert torch.equal(pool_tokens(tokens, 1, "avg"), tokens[:, 1:].mean(1))
    assert pool_tokens(tokens, 1, "cls+avg").shape == (2, 4)
    with pytest.raises(ConfigError):
        pool_tokens(tokens, 1, "max")


def test_features_use_the_organ_and_are_cached(tiny_export: str, tmp_path: pathlib.Path) -> None:
    from arlkit.data.synthetic import SyntheticTask

    model = resolve_backbone(tiny_export).model
    data = SyntheticTask("breast", 6, size=32)
    with_organ = extract_features(model, data, pool="cls", batch_size=4)
    without = extract_features(model, data, pool="cls", use_organ=False, batch_size=4)
    assert with_organ.features.shape == (6, 32)
    assert with_organ.labels.tolist() == data.labels
    assert not torch.allclose(with_organ.features, without.features)  # the condition matters
    key = {"k": 1}
    first, hit1 = cached_features(model, data, key, str(tmp_path), pool="cls", batch_size=4)
    second, hit2 = cached_features(model, data, key, str(tmp_path), pool="cls", batch_size=4)
    assert (hit1, hit2) == (False, True)
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.features, with_organ.features)
    _, hit3 = cached_features(model, data, {"k": 2}, str(tmp_path), pool="cls", batch_size=4)
    assert not hit3
