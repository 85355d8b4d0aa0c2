"""Side information beside the organ: condition mappings from the data to the conditioners."""

from __future__ import annotations

import io
import pathlib

import pytest
import torch
from torch import nn

from arlkit.conditioners import canonical_condition, organ_of
from arlkit.data.condition import (
    CONDITION_KEYS,
    batch_condition,
    check_condition_keys,
    probe_indices,
)
from arlkit.data.manifest import PROBES
from arlkit.engine.data import collate_views
from arlkit.engine.step import Step
from arlkit.errors import ConfigError, DataError
from arlkit.models.avit import AViT
from arlkit.registry import default_registries
from arlkit.taxonomy import Taxonomy

QUICKSTART = str(pathlib.Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")


class SideConditioner(nn.Module):
    """Organ one-hot plus a learned row per probe index (reads ``condition_keys``)."""

    condition_keys = ("probe",)

    def __init__(self, dim: int, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.k = taxonomy.num_classes
        self.organ = nn.Embedding(self.k + 1, dim)
        self.probe = nn.Embedding(len(PROBES), dim)
        self.seen: list[object] = []

    def forward(self, condition, batch_size: int) -> torch.Tensor:
        self.seen.append(condition)
        out = self.organ(organ_of(condition))
        if isinstance(condition, dict) and "probe" in condition:
            out = out + self.probe(condition["probe"])
        return out


def _avit(conditioner: type[nn.Module] | None = None) -> AViT:
    torch.manual_seed(0)
    model = AViT(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2).eval()
    if conditioner is not None:
        for blk in model.blocks:
            blk.conditioner = conditioner(16, model.taxonomy)
    return model


def test_canonical_condition_keeps_side_information_and_checks_rows():
    tax = Taxonomy()
    organ = torch.tensor([0, 3])
    assert torch.equal(canonical_condition(organ, 2, tax), organ)
    out = canonical_condition({"organ": ["breast", tax.unknown_index], "probe": torch.tensor([1, 3])}, 2, tax)
    assert out["organ"].tolist() == [tax.index("breast"), tax.unknown_index]
    assert out["probe"].tolist() == [1, 3]
    assert canonical_condition({"probe": torch.tensor([0, 0])}, 2, tax)["organ"].tolist() == [
        tax.unknown_index] * 2  # no organ entry: unknown  # fmt: skip
    with pytest.raises(DataError, match=r"condition 'probe': expected a tensor with 2 rows.*\(3,\)"):
        canonical_condition({"organ": organ, "probe": torch.tensor([1, 2, 3])}, 2, tax)
    with pytest.raises(DataError, match="condition 'depth_cm'.*got list"):
        canonical_condition({"organ": organ, "depth_cm": [1.0, 2.0]}, 2, tax)


def test_backbone_passes_side_information_to_conditioners_that_read_it():
    x = torch.randn(3, 1, 16, 16)
    organ = torch.tensor([0, 0, 5])
    plain = _avit()
    assert plain.condition_keys == ()
    # a built-in conditioner reads the organ of a mapping and ignores the rest
    ref = plain.forward_features(x, organ)
    assert torch.equal(plain.forward_features(x, {"organ": organ, "probe": torch.tensor([0, 1, 2])}), ref)
    side = _avit(SideConditioner)
    assert side.condition_keys == ("probe",)
    for p in side.parameters():  # the offset nets start at zero: give the context an effect
        nn.init.normal_(p, std=0.1)
    a = side.forward_features(x, {"organ": organ, "probe": torch.tensor([0, 0, 0])})
    b = side.forward_features(x, {"organ": organ, "probe": torch.tensor([0, 2, 0])})
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.allclose(a[1], b[1])
    seen = side.blocks[0].conditioner.seen[-1]
    assert set(seen) == {"organ", "probe"} and seen["probe"].tolist() == [0, 2, 0]
    with pytest.raises(DataError, match="condition 'probe'"):
        side.forward_features(x, {"organ": organ, "probe": torch.tensor([0, 1])})


def test_batches_carry_probe_indices():
    samples = [{"organ": 1, "probe": "convex", "global": torch.zeros(2, 1, 8, 8), "_pos": 0,
                "depth_cm": 4.5},
               {"organ": 2, "probe": "phased", "global": torch.zeros(2, 1, 8, 8), "_pos": 1},
               {"organ": 2, "global": torch.zeros(2, 1, 8, 8), "_pos": 2}]
    batch = collate_views(samples)
    assert batch["probe"].tolist() == [PROBES.index("convex"), PROBES.index("phased"),
                                       PROBES.index("unknown")]
    assert batch["depth_cm"][0] == 4.5 and batch["depth_cm"][1:].isnan().all()
    assert torch.equal(batch_condition(batch, ()), batch["organ"])
    both = batch_condition(batch, CONDITION_KEYS)
    assert both["organ"].tolist() == [1, 2, 2] and torch.equal(both["probe"], batch["probe"])
    assert set(both) == {"organ", "probe", "depth_cm"}
    with pytest.raises(DataError, match="sample 'x7': unknown probe 'sector-2'"):
        probe_indices([{"id": "x7", "probe": "sector-2"}])


def test_step_repeats_side_information_view_major():
    organ, probe = torch.tensor([4, 7]), torch.tensor([0, 2])
    step = Step(0, 0, torch.zeros(4, 1, 8, 8), None, organ, None, (1, 1), 2, 0, side={"probe": probe})
    cond = step.condition_for(2)
    assert cond["organ"].tolist() == [4, 7, 4, 7] and cond["probe"].tolist() == [0, 2, 0, 2]
    assert torch.equal(Step(0, 0, torch.zeros(4, 1, 8, 8), None, organ, None, (1, 1), 2, 0)
                       .condition_for(2), organ.repeat(2))


def test_a_conditioner_reading_what_the_data_lacks_is_a_config_error():
    check_condition_keys(("probe",), "x")
    check_condition_keys(("probe", "depth_cm"), "x")
    with pytest.raises(ConfigError, match="reads 'heart_rate', which the data does not provide"):
        check_condition_keys(("probe", "heart_rate"), "conditioner 'y'")

    class HeartRateConditioner(SideConditioner):
        condition_keys = ("heart_rate",)

    from arlkit.engine.run import run_recipe

    default_registries.conditioners.add("test_hr", HeartRateConditioner, provider="tests")
    try:
        out = io.StringIO()
        with pytest.raises(ConfigError, match=r"model\.conditioner.*'test_hr'.*'heart_rate'"):
            run_recipe(QUICKSTART, ["model.conditioner.name=test_hr",
                                                   "train.steps=1", "run_dir=/nonexistent/x"],
                       stream=out, dry_run=True)
    finally:
        default_registries.conditioners.remove("test_hr")


def test_feature_extraction_feeds_the_probe_to_a_backbone_that_reads_it():
    from arlkit.data.synthetic.dataset import SyntheticTask
    from arlkit.eval.features import extract_features

    data = SyntheticTask("breast", 4, "test", size=32, seed=0)
    model = AViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    model.blocks[0].conditioner = SideConditioner(16, model.taxonomy)
    extract_features(model, data, pool="cls", batch_size=4)
    seen = model.blocks[0].conditioner.seen[-1]
    assert seen["probe"].tolist() == [PROBES.index(s["probe"]) for s in data]
    assert seen["organ"].tolist() == [s["organ"] for s in data]
