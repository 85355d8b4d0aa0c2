"""Label corruption, the robustness measurement, and the organ_classifier objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from organ_helpers import tiny_backbone
from torch import nn

from arlkit.engine.objectives import ObjectiveContext
from arlkit.engine.step import Step
from arlkit.errors import ConfigError
from arlkit.organ import AutoOrganBackbone, corrupt_labels, robustness_row, train_organ_classifier
from arlkit.organ.objective import OrganClassifierObjective


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 60), frac=st.floats(0, 1), k=st.integers(2, 20), seed=st.integers(0, 99))
def test_corrupt_labels_exact_count_and_always_wrong(n, frac, k, seed):
    gen = torch.Generator().manual_seed(seed)
    organ = torch.randint(0, k, (n,), generator=gen)
    out = corrupt_labels(organ, frac, k, gen)
    changed = out != organ
    assert int(changed.sum()) == round(frac * n)
    assert bool(((out >= 0) & (out < k)).all())


def test_corrupt_labels_rejects_bad_fraction():
    with pytest.raises(ConfigError):
        corrupt_labels(torch.zeros(3, dtype=torch.long), 1.5, 4, torch.Generator())


def test_robustness_rows(organ_data):
    x, o = organ_data
    model = tiny_backbone()
    head = train_organ_classifier(model, x[:160], o[:160], model.taxonomy, steps=50)
    y = (o >= 8).long()  # a toy downstream label
    train, test = (x[:200], o[:200], y[:200]), (x[200:], o[200:], y[200:])
    zero = robustness_row("soft_embedding", model, train, test, 0.0)
    assert zero.drop == 0.0  # nothing corrupted, same features
    auto = robustness_row("auto", AutoOrganBackbone(model, head), train, test, 0.3)
    assert auto.drop == 0.0 and 0.0 <= auto.clean <= 1.0  # labels never reach the model


def _context(objectives=("organ_classifier",)):
    return ObjectiveContext(embed_dim=32, patch_size=8, in_chans=1, num_prefix_tokens=1,
                            sparse_encoder=False, grid=(4, 4), n_global=2, n_local=0,
                            total_steps=10, steps_per_epoch=10, objectives=objectives)


def _student(obj):
    student = nn.Module()
    student.backbone = tiny_backbone()
    student.heads = nn.ModuleDict({"organ_classifier": obj.build_heads()})
    return student


def test_objective_loss_matches_cross_entropy(organ_data):
    x, o = organ_data
    obj = OrganClassifierObjective(_context())
    obj.name = "organ_classifier"
    student = _student(obj)
    torch.nn.init.normal_(student.heads["organ_classifier"]["classifier"].fc.weight)
    organ = torch.tensor([0, 3, 16, 5])  # one unknown image: ignored
    step = Step(0, 0, x[:8], None, organ, None, (4, 4), 2, 0)
    loss = obj.loss(step, student)
    rows = organ.repeat(2)
    logits = student.heads["organ_classifier"]["classifier"](
        student.backbone.forward_features(x[:8], None)[:, 0])
    keep = rows < 16
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], rows[keep]))
    loss.backward()
    assert student.heads["organ_classifier"]["classifier"].fc.weight.grad.abs().sum() > 0
    # the label never reaches the features the head reads: the conditioners get no gradient
    for blk in student.backbone.blocks:
        g = blk.conditioner.embedding.grad
        assert g is None or bool((g[:16] == 0).all())


def test_objective_all_unknown_and_bad_classes(organ_data):
    x, _ = organ_data
    obj = OrganClassifierObjective(_context())
    obj.name = "organ_classifier"
    student = _student(obj)
    step = Step(0, 0, x[:4], None, torch.full((2,), 16), None, (4, 4), 2, 0)
    assert float(obj.loss(step, student).detach()) == 0.0
    with pytest.raises(ConfigError, match="num_classes"):
        OrganClassifierObjective(_context(), num_classes=1)
    small = OrganClassifierObjective(_context(), num_classes=4)
    small.name = "organ_classifier"
    bad = Step(0, 0, x[:4], None, torch.tensor([0, 9]), None, (4, 4), 2, 0)
    with pytest.raises(ConfigError, match="exceeds num_classes"):
        small.loss(bad, _student(small))


def test_plugin_registers_objective():
    from arlkit.organ import plugin
    from arlkit.registry import Registrar, Registries

    regs = Registries()
    plugin.arlkit_register_objectives(Registrar(regs.objectives, "arlkit.organ.plugin"))
    assert "organ_classifier" in regs.objectives.names()
    params = regs.objectives.get("organ_classifier").validate_params({"num_classes": 17})
    assert params["num_classes"] == 17


def test_corrupt_unknown_rows_uniform_over_all_organs():
    # an unknown row (index K) has no organ to avoid: each of the K organs is equally likely
    # (K + shift with shift in 1..K-1 would never give organ 0)
    k = 4
    out = corrupt_labels(torch.full((800,), k), 1.0, k, torch.Generator().manual_seed(0))
    counts = torch.bincount(out, minlength=k + 1)
    assert counts[k] == 0 and bool((counts[:k] > 150).all()), counts  # 200 expected each


def test_objective_num_classes_must_match_taxonomy():
    from dataclasses import replace

    from arlkit.taxonomy import Taxonomy

    ctx = replace(_context(), taxonomy=Taxonomy())  # 16 organs, unknown = 16
    assert OrganClassifierObjective(ctx).num_classes == 16
    # 17 would train unknown images as class 16; 4 would ignore organ 4 as unknown
    for bad in (17, 4):
        with pytest.raises(ConfigError, match="taxonomy has 16 organs"):
            OrganClassifierObjective(ctx, num_classes=bad)
