from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from arlkit.engine.optim import clip_gradients, param_groups
from arlkit.engine.schedules import cosine


def test_cosine_hand_values():
    assert cosine(0, 11, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine(5, 11, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine(10, 11, 1.0, 0.0) == pytest.approx(0.0)
    assert cosine(50, 11, 1.0, 0.0) == pytest.approx(0.0)
    # warm-up 0 → 1 over 4 steps, then cosine over the remaining 6 intervals
    assert [cosine(s, 11, 1.0, 0.0, warmup=4) for s in range(4)] == pytest.approx(
        [0.0, 0.25, 0.5, 0.75]
    )
    assert cosine(4, 11, 1.0, 0.0, warmup=4) == pytest.approx(1.0)
    assert cosine(7, 11, 1.0, 0.0, warmup=4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine(0, 1, 2.0, 0.0, warmup=5) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        cosine(0, 0, 1.0, 0.0)


def test_param_groups_exclude_norms_biases_and_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

    net = Net()
    decay, no_decay = param_groups(net)
    assert [p is net.proj.weight for p in decay["params"]] == [True]
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "cls_token", "norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    assert decay["apply_wd"] and not no_decay["apply_wd"] and no_decay["weight_decay"] == 0.0


def test_param_groups_decay_projections_named_embed_not_tables():
    """Tables and tokens are matched on what they are, not on a substring of their path: the
    MIM decoder's input Linear ``decoder.embed`` decays (as MAE's ``decoder_embed`` does),
    an ``nn.Embedding`` table and a bare ``embedding`` / ``*pos_embed`` parameter do not, and
    a module's timm-style ``no_weight_decay()`` names are honoured."""
    from arlkit.models.decoders import MIMDecoder

    class Rel(nn.Module):
        def __init__(self):
            super().__init__()
            self.rel_table = nn.Parameter(torch.zeros(3, 2))
            self.proj = nn.Linear(2, 2, bias=False)

        def no_weight_decay(self):
            return {"rel_table"}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = MIMDecoder(in_dim=8, patch_size=2, dim=8, depth=1, num_heads=2)
            self.probe_embed = nn.Embedding(3, 8)
            self.embedding = nn.Parameter(torch.zeros(4, 8))
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
            self.rel = Rel()

    net = Net()
    decay, no_decay = param_groups(net)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "decoder.embed.weight" in decayed
    assert decayed == {
        "decoder.embed.weight", "decoder.blocks.0.attn.qkv.weight", "decoder.blocks.0.attn.proj.weight",
        "decoder.blocks.0.mlp.fc1.weight", "decoder.blocks.0.mlp.fc2.weight",
        "decoder.last_layer.weight", "rel.proj.weight"}
    assert {"probe_embed.weight", "embedding", "decoder_pos_embed", "rel.rel_table"} <= {
        names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def _grads(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 5, 2)]
    for p, scale in zip(params, (10.0, 0.1, 2.0), strict=True):
        p.grad = scale * torch.randn(p.shape, generator=g)
    return params


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_clip_gradients_globally_is_torchs(max_norm) -> None:
    mine, ref = _grads(0), _grads(0)
    total = clip_gradients(mine, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(ref, max_norm or math.inf)
    torch.testing.assert_close(total, expected)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_clip_gradients_per_parameter_is_dinos() -> None:
    params = _grads(1)
    before = [p.grad.clone() for p in params]
    total = clip_gradients(params, 1.0, per_parameter=True)
    torch.testing.assert_close(total, torch.linalg.vector_norm(torch.cat(before)))
    for p, g in zip(params, before, strict=True):  # DINO utils.clip_gradients, by hand
        coef = 1.0 / (g.norm() + 1e-6)
        torch.testing.assert_close(p.grad, g * coef if coef < 1 else g)
    assert params[1].grad.norm() < 1.0 and torch.equal(params[1].grad, before[1])  # untouched
    assert abs(float(params[0].grad.norm()) - 1.0) < 1e-5  # its own bound, not a shared one
