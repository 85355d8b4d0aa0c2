"""Adding an organ: old-class outputs bit-identical, new parameters trained, export records it."""

from __future__ import annotations

import pytest
import torch
from organ_helpers import tiny_backbone, tiny_config

from arlkit.engine.export import export_backbone, load_backbone, read_export
from arlkit.errors import ConfigError
from arlkit.organ import add_organ, train_organ_classifier


@pytest.mark.parametrize("conditioner", ["soft_embedding", "onehot"])
def test_old_outputs_bit_identical(organ_data, conditioner):
    x, o = organ_data
    model = tiny_backbone(conditioner)
    head = train_organ_classifier(model, x[:160], o[:160], model.taxonomy, steps=50)
    imgs = x[:17]
    old_idx = torch.arange(17) % 17  # every old class 0..15 and unknown (16)
    with torch.no_grad():
        before = model.forward_features(imgs, old_idx)
        before_none = model.forward_features(imgs, None)
        before_head = head(organ_features_of(model, imgs))
    new_images = x[o == 3][:4]  # liver images pose as the new organ
    added = add_organ(model, "ovary_new", new_images, head=head, steps=5)
    assert added.index == 16 and model.taxonomy.organs[-1] == "ovary_new"
    remapped = torch.where(old_idx == 16, torch.tensor(17), old_idx)  # unknown moved to 17
    with torch.no_grad():
        after = model.forward_features(imgs, remapped)
        after_none = model.forward_features(imgs, None)
        after_head = head(organ_features_of(model, imgs))
        new = model.forward_features(imgs, torch.full((17,), 16))
    assert torch.equal(before, after)
    assert torch.equal(before_none, after_none)
    assert torch.equal(before_head, after_head[:, :16])
    assert after_head.shape == (17, 17)
    assert not torch.equal(new, after_none)  # the new class conditions differently


def organ_features_of(model, x):
    from arlkit.organ import organ_features

    return organ_features(model, x)


def test_new_row_initialised_and_trained(organ_data):
    x, o = organ_data
    model = tiny_backbone()
    head = train_organ_classifier(model, x[:240], o[:240], model.taxonomy, steps=200)
    old = model.blocks[0].conditioner.embedding.detach().clone()
    added = add_organ(model, "ovary_new", x[o == 10][:6], head=head, steps=10, min_prob=0.0)
    emb = model.blocks[0].conditioner.embedding.detach()
    src = model.taxonomy.index(added.init_from) if added.init_from != "unknown" else 16
    src_row = old[src] if src < 16 else old[16]
    assert emb.shape == (18, 32)
    assert not torch.equal(emb[16], src_row)  # trained away from its initialisation
    assert (emb[16] - src_row).norm() < src_row.norm()  # but started there
    assert added.loss_last <= added.loss_first
    # the head now recognises the new organ on its own images
    feats = organ_features_of(model, x[o == 10][:6])
    assert (head(feats).argmax(-1) == 16).float().mean() >= 0.5


def test_unknown_init_without_head(organ_data):
    x, _ = organ_data
    model = tiny_backbone()
    added = add_organ(model, "new_organ", x[:3], steps=0)
    emb = model.blocks[0].conditioner.embedding
    assert added.init_from == "unknown"
    assert torch.equal(emb[16], emb[17])  # copied from the unknown embedding, untrained


def test_bad_names(organ_data):
    x, _ = organ_data
    model = tiny_backbone()
    with pytest.raises(ConfigError, match="already in the taxonomy"):
        add_organ(model, "liver", x[:2], steps=0)
    with pytest.raises(ConfigError, match="not a valid organ name"):
        add_organ(model, "Bad Name", x[:2], steps=0)
    with pytest.raises(ConfigError, match="not a valid organ name"):
        add_organ(model, "unknown", x[:2], steps=0)


def test_export_records_extended_taxonomy(organ_data, tmp_path):
    x, _ = organ_data
    model = tiny_backbone()
    add_organ(model, "ovary_new", x[:3], steps=2)
    cfg = {**tiny_config(), "taxonomy": list(model.taxonomy.organs)}
    path = export_backbone(model, cfg, str(tmp_path / "ext.safetensors"))
    _, config, _ = read_export(path)
    assert config["taxonomy"][-1] == "ovary_new"
    back = load_backbone(path)
    with torch.no_grad():
        assert torch.equal(back.forward_features(x[:2], [16, 16]),
                           model.forward_features(x[:2], [16, 16]))


def test_add_organ_leaves_model_trainable(organ_data):
    # like resize_token_embeddings: the model comes back as it went in, ready to fine-tune
    x, _ = organ_data
    model = tiny_backbone().train()
    model.blocks[1].norm1.weight.requires_grad_(False)  # a frozen part stays frozen
    add_organ(model, "ovary_new", x[:2], steps=1)
    assert model.training
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.1.norm1.weight"}
    assert model.blocks[0].conditioner.embedding.requires_grad


def test_add_organ_refuses_a_foreign_head(organ_data):
    from arlkit.organ import OrganClassifier
    from arlkit.taxonomy import Taxonomy

    x, _ = organ_data
    model = tiny_backbone()
    other = Taxonomy(tuple(f"o{i}" for i in range(16)))  # same size, other organs
    head = OrganClassifier(32, other)
    with pytest.raises(ConfigError, match="another backbone"):
        add_organ(model, "ovary_new", x[:2], head=head, steps=0)
    assert head.taxonomy == other and model.taxonomy.num_classes == 16  # nothing relabelled


def test_auto_wrapper_follows_added_organ(organ_data):
    from arlkit.organ import AutoOrganBackbone, OrganClassifier

    x, _ = organ_data
    model = tiny_backbone()
    head = OrganClassifier(32, model.taxonomy)
    auto = AutoOrganBackbone(model, head)
    add_organ(model, "ovary_new", x[:2], head=head, steps=0)
    # a stale copy would still say unknown = 16, which is now the new organ
    assert auto.taxonomy.unknown_index == 17 and auto.taxonomy.organs[-1] == "ovary_new"
    assert auto.head.taxonomy == auto.taxonomy
