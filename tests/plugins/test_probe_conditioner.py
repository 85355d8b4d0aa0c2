from __future__ import annotations

import importlib.metadata as md
import pathlib

import pytest
import torch

from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

QUICKSTART = str(pathlib.Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")

arlkit_probe = pytest.importorskip(
    "arlkit_probe", reason="install the plugin: pip install -e plugins/arlkit-probe"
)


def test_entry_point_is_declared():
    eps = {ep.name: ep for ep in md.entry_points(group="arlkit")}
    assert eps["probe"].value == "arlkit_probe.plugin"
    assert eps["probe"].dist.name == "arlkit-probe"


def test_registered_through_default_registries():
    from arlkit.registry import default_registries

    entry = default_registries.conditioners.get("probe")
    assert entry.provider == "probe"
    cond = entry.build({"max_depth_cm": 20.0}, dim=8, taxonomy=Taxonomy())
    assert isinstance(cond, arlkit_probe.ProbeConditioner)


def test_output_depends_on_organ_probe_and_depth():
    torch.manual_seed(0)
    tax = Taxonomy()
    cond = arlkit_probe.ProbeConditioner(dim=8, taxonomy=tax)
    torch.nn.init.normal_(cond.probe_embed.weight)
    torch.nn.init.normal_(cond.depth_proj.weight)
    organ = torch.tensor([0, 0, 11])
    base = cond(organ, 3)
    assert base.shape == (3, 8)
    assert torch.allclose(base[0], base[1]) and not torch.allclose(base[0], base[2])
    with_probe = cond({"organ": organ, "probe": torch.tensor([0, 2, 3])}, 3)
    assert not torch.allclose(with_probe[0], with_probe[1])
    depth = torch.tensor([4.0, 16.0, float("nan")])
    with_depth = cond({"organ": organ, "depth_cm": depth}, 3)
    assert not torch.allclose(with_depth[0], with_depth[1])
    assert torch.allclose(with_depth[2], base[2])  # NaN depth = not recorded = no change


def test_unknown_organ_is_zero_onehot_and_soft_labels_match_hard():
    tax = Taxonomy()
    cond = arlkit_probe.ProbeConditioner(dim=4, taxonomy=tax)
    unknown = cond(torch.tensor([tax.unknown_index]), 1)
    assert torch.allclose(unknown, cond(None, 1))
    assert torch.allclose(unknown[0], cond.organ_proj.bias)
    soft = torch.nn.functional.one_hot(torch.tensor([3]), tax.num_classes).float()
    assert torch.allclose(cond(soft, 1), cond(torch.tensor([3]), 1))


def test_bad_inputs_raise():
    cond = arlkit_probe.ProbeConditioner(dim=4, taxonomy=Taxonomy())
    with pytest.raises(ConfigError, match="probe index outside"):
        cond({"probe": torch.tensor([7])}, 1)
    with pytest.raises(ConfigError, match="max_depth_cm must be > 0"):
        arlkit_probe.ProbeConditioner(dim=4, taxonomy=Taxonomy(), max_depth_cm=0)


def test_training_feeds_each_image_s_probe(tmp_path):
    """A recipe with ``conditioner: probe`` trains the rows of the probes in its data (the
    synthetic corpus drawn with linear and convex probes only) and no other row."""
    import io

    from arlkit.engine import checkpoint as ckpt
    from arlkit.engine.run import run_recipe

    toy = ["model.backbone.params.embed_dim=32", "model.backbone.params.depth=2",
           "model.backbone.params.num_heads=2", "model.backbone.params.img_size=32",
           "data.dataset.params.size=48", "data.dataset.params.length=32",
           "data.dataset.params.probes=[linear,convex]", "data.batch_size=4",
           "data.num_workers=0", "data.views.params.global_size=32",
           "data.views.params.local_size=16", "objectives.self_distillation.params.out_dim=32",
           "optim.warmup_steps=0", "train.steps=2", "train.device=cpu",
           "model.conditioner.name=probe", f"run_dir={tmp_path / 'run'}"]
    assert run_recipe(QUICKSTART, toy, stream=io.StringIO()) == 0
    tensors, _, _ = ckpt.read_checkpoint(str(tmp_path / "run" / "checkpoints" / "step-00000002"))
    rows = tensors["student.backbone.blocks.0.conditioner.probe_embed.weight"].abs().sum(1)
    names = [*arlkit_probe.PROBE_TYPES, "not recorded"]
    trained = {n for n, r in zip(names, rows.tolist(), strict=True) if r > 0}
    assert trained == {"linear", "convex"}
    # the synthetic corpus records no depth: its projection gets no gradient
    assert not tensors["student.backbone.blocks.0.conditioner.depth_proj.weight"].any()


def test_training_feeds_a_manifest_s_depth(tmp_path, run):
    """A manifest's ``depth_cm`` column reaches the conditioner's depth projection."""
    import io

    from arlkit.engine import checkpoint as ckpt
    from arlkit.engine.run import run_recipe

    data = tmp_path / "data"
    assert run("data", "synth", "--out", str(data), "--n", "8", "--organs", "thyroid",
               "--size", "48").returncode == 0
    lines = (data / "manifest.csv").read_text().splitlines()
    depth = [lines[0] + ",depth_cm"] + [f"{row},{3 + i}" for i, row in enumerate(lines[1:])]
    (data / "manifest.csv").write_text("\n".join(depth) + "\n")
    toy = ["model.backbone.params.embed_dim=32", "model.backbone.params.depth=2",
           "model.backbone.params.num_heads=2", "model.backbone.params.img_size=32",
           f"data.dataset={{name: manifest, params: {{path: {data / 'manifest.csv'}, size: 48}}}}",
           "data.batch_size=4", "data.num_workers=0", "data.views.params.global_size=32",
           "data.views.params.local_size=16", "objectives.self_distillation.params.out_dim=32",
           "optim.warmup_steps=0", "train.steps=2", "train.device=cpu",
           "model.conditioner.name=probe", f"run_dir={tmp_path / 'run'}"]
    assert run_recipe(QUICKSTART, toy, stream=io.StringIO()) == 0
    tensors, _, _ = ckpt.read_checkpoint(str(tmp_path / "run" / "checkpoints" / "step-00000002"))
    assert tensors["student.backbone.blocks.0.conditioner.depth_proj.weight"].abs().sum() > 0


def test_probe_types_follow_arlkit_data():
    from arlkit.data.manifest import PROBES

    assert (*arlkit_probe.PROBE_TYPES, "unknown") == PROBES
    assert arlkit_probe.ProbeConditioner.condition_keys == ("probe", "depth_cm")
