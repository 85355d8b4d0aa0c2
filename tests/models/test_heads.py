"""DINO head against torch's weight norm; last-layer freezing; EMA update and momentum schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError
from arlkit.models.ema import cosine_momentum, ema_update
from arlkit.models.heads import DINOHead, cancel_last_layer_gradients


def test_head_matches_reference_built_from_torch_layers() -> None:
    torch.manual_seed(0)
    head = DINOHead(
        in_dim=12, out_dim=40, hidden_dim=24, bottleneck_dim=8, nlayers=3, norm_last_layer=False
    )
    with torch.no_grad():
        head.last_layer.weight_g.mul_(torch.rand(40, 1) + 0.5)  # non-trivial norms
    ref_last = nn.utils.parametrizations.weight_norm(nn.Linear(8, 40, bias=False), dim=0)
    ref_last.parametrizations.weight.original0.data.copy_(head.last_layer.weight_g.data)
    ref_last.parametrizations.weight.original1.data.copy_(head.last_layer.weight_v.data)
    mlp = head.mlp
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    x = torch.randn(5, 12)
    ref = ref_last(F.normalize(mlp[4](F.gelu(mlp[2](F.gelu(mlp[0](x))))), dim=-1))
    torch.testing.assert_close(head(x), ref)


def test_norm_last_layer_freezes_norms_and_bounds_logits() -> None:
    head = DINOHead(in_dim=6, out_dim=30, hidden_dim=16, bottleneck_dim=4)
    assert not head.last_layer.weight_g.requires_grad
    out = head(torch.randn(9, 6) * 100)
    assert out.shape == (9, 30)
    # unit bottleneck · unit prototypes = cosine similarities
    assert out.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(30))


def test_state_dict_uses_dino_parameter_names() -> None:
    keys = set(DINOHead(in_dim=4, out_dim=7, hidden_dim=8, bottleneck_dim=3).state_dict())
    assert keys == {
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "mlp.4.weight",
        "mlp.4.bias",
        "last_layer.weight_g",
        "last_layer.weight_v",
    }


@pytest.mark.parametrize("nlayers,use_bn", [(1, False), (2, True), (4, False)])
def test_layer_counts_and_batch_norm(nlayers: int, use_bn: bool) -> None:
    head = DINOHead(
        in_dim=5, out_dim=11, hidden_dim=7, bottleneck_dim=3, nlayers=nlayers, use_bn=use_bn
    )
    linears = [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == nlayers
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.mlp.modules()) == use_bn
    assert head(torch.randn(4, 5)).shape == (4, 11)


def test_patch_tokens_share_batch_norm_statistics_over_all_tokens() -> None:
    # patch_distillation feeds (B, N, C); BatchNorm1d would take N for the channels
    torch.manual_seed(0)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4, use_bn=True).train()
    flat = copy.deepcopy(head)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(head(x), flat(x.reshape(10, 6)).reshape(2, 5, 10))
    torch.testing.assert_close(head.mlp[1].running_mean, flat.mlp[1].running_mean)


def test_cancel_last_layer_gradients_during_frozen_epochs() -> None:
    head = DINOHead(
        in_dim=4,
        out_dim=6,
        hidden_dim=8,
        bottleneck_dim=3,
        norm_last_layer=False,
        freeze_last_layer=1,
    )
    head(torch.randn(3, 4)).sum().backward()
    assert head.cancel_last_layer_gradients(epoch=0.5)
    assert head.last_layer.weight_v.grad is None and head.last_layer.weight_g.grad is None
    assert head.mlp[0].weight.grad is not None
    head(torch.randn(3, 4)).sum().backward()
    assert not head.cancel_last_layer_gradients(epoch=1)
    assert head.last_layer.weight_v.grad is not None
    wrapper = nn.Sequential(nn.Identity(), head)  # works through a containing module
    assert cancel_last_layer_gradients(wrapper, 0, 2)
    assert head.last_layer.weight_v.grad is None


def test_bad_sizes_raise() -> None:
    with pytest.raises(ConfigError, match="positive"):
        DINOHead(in_dim=0)


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 3))  # moves the student's BN statistics
    return teacher, student


def test_ema_update_matches_hand_computation_and_ignores_buffers() -> None:
    teacher, student = _pair()
    before = [p.clone() for p in teacher.parameters()]
    buffers = [b.clone() for b in teacher.buffers()]
    ema_update(teacher, student, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
        assert not t.requires_grad or t.grad is None
    for b, b0 in zip(teacher.buffers(), buffers):
        assert torch.equal(b, b0)
    # a teacher kept in eval mode takes the student's running statistics (moved by _pair)
    assert not torch.equal(teacher[1].running_mean, student[1].running_mean)
    ema_update(teacher, student, 0.9, copy_buffers=True)
    assert list(teacher.buffers()) and all(
        torch.equal(b, s) for b, s in zip(teacher.buffers(), student.buffers(), strict=True))


def test_ema_extreme_momenta_and_errors() -> None:
    teacher, student = _pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), before))
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    with pytest.raises(ConfigError, match="momentum"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ConfigError, match="parameters"):
        ema_update(nn.Linear(3, 4), nn.Linear(3, 4, bias=False), 0.5)
    with pytest.raises(ConfigError, match="shape"):
        ema_update(nn.Linear(3, 4), nn.Linear(4, 3), 0.5)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx((0.996 + 1.0) / 2)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(200, 100) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, base=0.9, final=0.99) == pytest.approx(
        0.99 - 0.09 * (1 + math.cos(math.pi / 4)) / 2
    )
    values = [cosine_momentum(s, 50) for s in range(51)]
    assert values == sorted(values)
    with pytest.raises(ConfigError):
        cosine_momentum(0, 0)
