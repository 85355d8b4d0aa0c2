"""Organ recognition accuracy, head files, and organ='auto' conditioning."""

from __future__ import annotations

import pytest
import torch
from organ_helpers import tiny_backbone

from arlkit.errors import ArlkitError, ConfigError, DataError
from arlkit.organ import (
    AutoOrganBackbone,
    OrganClassifier,
    load_head,
    organ_features,
    save_head,
    train_organ_classifier,
)
from arlkit.taxonomy import Taxonomy


def test_organ_recognition_well_above_chance(organ_data):
    # 16 organs: chance is 1/16 = 0.0625; a random-init tiny backbone + linear head reaches ~0.5
    x, o = organ_data
    model = tiny_backbone()
    head = train_organ_classifier(model, x[:240], o[:240], model.taxonomy, steps=200)
    acc = float((head(organ_features(model, x[240:])).argmax(-1) == o[240:]).float().mean())
    assert acc > 4 * (1 / 16), acc


def test_features_ignore_the_label(organ_data):
    # the head must read unknown-conditioned features: identical to organ=None
    x, _ = organ_data
    model = tiny_backbone()
    ref = model.forward_features(x[:4], torch.full((4,), 16))[:, 0]
    torch.testing.assert_close(organ_features(model, x[:4]), ref, rtol=0, atol=0)


def test_needs_two_organs(organ_data):
    x, _ = organ_data
    model = tiny_backbone()
    with pytest.raises(DataError, match="at least two organs"):
        train_organ_classifier(model, x[:5], torch.zeros(5, dtype=torch.long), model.taxonomy)


def test_head_roundtrip(tmp_path):
    head = OrganClassifier(32, Taxonomy(("a", "b", "c")))
    torch.nn.init.normal_(head.fc.weight)
    path = save_head(head, str(tmp_path / "h.safetensors"))
    back = load_head(path)
    f = torch.randn(5, 32)
    assert back.taxonomy == head.taxonomy
    torch.testing.assert_close(back(f), head(f), rtol=0, atol=0)
    with pytest.raises(ArlkitError, match="no such file"):
        load_head(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("conditioner", ["soft_embedding", "onehot"])
def test_auto_feeds_predicted_probabilities(organ_data, conditioner):
    x, o = organ_data
    model = tiny_backbone(conditioner)
    head = train_organ_classifier(model, x[:160], o[:160], model.taxonomy, steps=50)
    auto = AutoOrganBackbone(model, head)
    with torch.no_grad():
        probs = head.probabilities(model.forward_features(x[:6], None)[:, 0])  # (6, K)
        expected = model.forward_features(x[:6], probs)
        got = auto.forward_features(x[:6], "auto")
        plain = auto.forward_features(x[:6], o[:6])  # labels pass through
    assert probs.shape == (6, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(plain, model.forward_features(x[:6], o[:6]), rtol=0, atol=0)
    assert auto(x[:2]).shape == (2, 32)


def test_auto_rejects_mismatched_head():
    model = tiny_backbone()
    with pytest.raises(ConfigError, match="another taxonomy"):
        AutoOrganBackbone(model, OrganClassifier(32, Taxonomy(("a", "b"))))


def test_head_from_run_prefers_teacher(tmp_path):
    from arlkit.engine.checkpoint import write_checkpoint
    from arlkit.organ import head_from_run

    tax = Taxonomy(("a", "b", "c"))
    run = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with pytest.raises(ArlkitError, match="no complete checkpoint"):
        head_from_run(run, tax)
    w = {who: torch.randn(3, 8) for who in ("student", "teacher")}
    tensors = {f"{who}.heads.organ_classifier.classifier.fc.{p}": (w[who] if p == "weight"
               else torch.zeros(3)) for who in w for p in ("weight", "bias")}
    write_checkpoint(run, 4, tensors, {"step": 4})
    head = load_head(run, tax)
    assert torch.equal(head.fc.weight, w["teacher"]) and head.taxonomy == tax
    write_checkpoint(run, 5, {"student.backbone.x": torch.zeros(1)}, {"step": 5})
    with pytest.raises(ArlkitError, match="did not train an organ head"):
        head_from_run(run, tax)


def test_auto_guess_is_deterministic_in_train_mode(organ_data):
    # while fine-tuning (train mode, drop path on) the guess must be the eval-mode one the
    # head was trained on, as a given label would be; the backbone's mode is kept
    from organ_helpers import tiny_config

    from arlkit.engine.export import build_backbone

    x, _ = organ_data
    cfg = tiny_config()
    cfg["backbone"]["params"]["drop_path_rate"] = 0.5
    torch.manual_seed(0)
    model = build_backbone(cfg).eval()
    head = OrganClassifier(32, model.taxonomy)
    torch.nn.init.normal_(head.fc.weight, std=1.0)
    with torch.no_grad():
        ref_feats = model.forward_features(x[:8], None)[:, 0]
        ref = head.probabilities(ref_feats)
    auto = AutoOrganBackbone(model, head).train()
    got = auto._resolve(x[:8], "auto")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(organ_features(model, x[:8]), ref_feats, rtol=0, atol=0)
    assert model.training


def test_head_from_run_refuses_other_size(tmp_path):
    from arlkit.engine.checkpoint import write_checkpoint
    from arlkit.organ import head_from_run

    run = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    prefix = "student.heads.organ_classifier.classifier.fc."
    write_checkpoint(run, 1, {prefix + "weight": torch.zeros(3, 8), prefix + "bias": torch.zeros(3)},
                     {"step": 1})
    with pytest.raises(ArlkitError, match="3 outputs"):
        head_from_run(run, Taxonomy(("a", "b", "c", "d")))


def test_auto_inside_a_condition_mapping(organ_data):
    # conditioners with side information take {"organ": ..., key: ...}; "auto" works there too
    x, _ = organ_data
    model = tiny_backbone()
    head = OrganClassifier(32, model.taxonomy)
    torch.nn.init.normal_(head.fc.weight)
    auto = AutoOrganBackbone(model, head)
    with torch.no_grad():
        got = auto.forward_features(x[:3], {"organ": "auto"})
        probs = head.probabilities(model.forward_features(x[:3], None)[:, 0])
        ref = model.forward_features(x[:3], {"organ": probs})
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
