"""Self-distillation loss against direct computations; center EMA; temperature warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.losses import SelfDistillationLoss, teacher_temperature


def _direct(student, teacher, center, t_temp, s_temp, n_t, skip_same=True):
    """Plain double loop over samples and view pairs."""
    b = teacher.shape[0] // n_t
    n_s = student.shape[0] // b
    total, pairs = 0.0, 0
    for it in range(n_t):
        for iv in range(n_s):
            if skip_same and it == iv:
                continue
            term = 0.0
            for i in range(b):
                q = torch.softmax((teacher[it * b + i] - center[0]) / t_temp, dim=0)
                log_p = torch.log_softmax(student[iv * b + i] / s_temp, dim=0)
                term += -(q * log_p).sum().item()
            total += term / b
            pairs += 1
    return total / pairs


def test_equals_direct_computation_and_skips_same_view_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    b, d = 3, 7
    student = torch.randn(4 * b, d, generator=g, dtype=torch.float64)  # 2 global + 2 local
    teacher = torch.randn(2 * b, d, generator=g, dtype=torch.float64)
    loss_fn = SelfDistillationLoss(out_dim=d, teacher_temp=0.07, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, d, generator=g))
    center = loss_fn.center.clone().double()
    loss = loss_fn(student, teacher, step=0).item()
    assert loss == pytest.approx(_direct(student, teacher, center, 0.07, 0.1, 2), rel=1e-5)
    with_same = _direct(student, teacher, center, 0.07, 0.1, 2, skip_same=False)
    assert loss != pytest.approx(with_same, rel=1e-3)


def test_gradient_reaches_only_the_student() -> None:
    student = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    SelfDistillationLoss(out_dim=5)(student, teacher, 0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_center_ema_update() -> None:
    g = torch.Generator().manual_seed(1)
    loss_fn = SelfDistillationLoss(out_dim=4, center_momentum=0.8)
    c0 = torch.randn(1, 4, generator=g)
    loss_fn.center.copy_(c0)
    teacher = torch.randn(6, 4, generator=g)
    loss_fn(torch.randn(6, 4, generator=g), teacher, 0)
    torch.testing.assert_close(loss_fn.center, 0.8 * c0 + 0.2 * teacher.mean(0, keepdim=True))
    # the loss of that call used the old center: recompute it by hand
    fresh = SelfDistillationLoss(out_dim=4)
    fresh.center.copy_(c0)
    student = torch.randn(6, 4, generator=g)
    expected = _direct(student.double(), teacher.double(), c0.double(), 0.04, 0.1, 2)
    assert fresh(student, teacher, 0).item() == pytest.approx(expected, rel=1e-5)


def test_minimal_when_student_matches_sharpened_teacher() -> None:
    g = torch.Generator().manual_seed(2)
    b, d = 4, 6
    teacher_one = torch.randn(b, d, generator=g, dtype=torch.float64)
    teacher = torch.cat([teacher_one, teacher_one])  # two identical global views
    loss_fn = SelfDistillationLoss(out_dim=d, teacher_temp=0.05, student_temp=0.1)
    q = torch.softmax(teacher_one / 0.05, dim=-1)  # center is zero at the start
    best_student = torch.cat([0.1 * torch.log(q)] * 3)  # 3 student views, all equal to q
    best = loss_fn(best_student, teacher, 0).item()
    loss_fn.center.zero_()
    entropy = -(q * q.log()).sum(-1).mean().item()
    assert best == pytest.approx(entropy, rel=1e-6)
    for k in range(10):
        loss_fn.center.zero_()
        noisy = best_student + 0.05 * torch.randn(
            best_student.shape, generator=g, dtype=torch.float64
        )
        assert loss_fn(noisy, teacher, 0).item() > best, k


def test_teacher_temperature_warmup() -> None:
    assert teacher_temperature(0, 0.04, 0.07, 100) == pytest.approx(0.04)
    assert teacher_temperature(50, 0.04, 0.07, 100) == pytest.approx(0.055)
    assert teacher_temperature(100, 0.04, 0.07, 100) == pytest.approx(0.07)
    assert teacher_temperature(10**6, 0.04, 0.07, 100) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)
    loss_fn = SelfDistillationLoss(
        out_dim=3, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10
    )
    teacher = torch.randn(2, 3)
    torch.testing.assert_close(
        loss_fn.teacher_probs(teacher, 5), F.softmax(teacher / 0.055, dim=-1)
    )


def test_state_dict_round_trip() -> None:
    a = SelfDistillationLoss(out_dim=5)
    a(torch.randn(4, 5), torch.randn(4, 5), 0)
    b = SelfDistillationLoss(out_dim=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.center, b.center) and a.center.abs().sum() > 0
    assert list(a.state_dict()) == ["center"]


def test_shape_errors() -> None:
    loss_fn = SelfDistillationLoss(out_dim=5)
    with pytest.raises(ConfigError, match="out_dim=5"):
        loss_fn(torch.randn(4, 6), torch.randn(4, 6), 0)
    with pytest.raises(ConfigError, match="multiple of teacher_views"):
        loss_fn(torch.randn(6, 5), torch.randn(3, 5), 0)
    with pytest.raises(ConfigError, match="V_s"):
        loss_fn(torch.randn(5, 5), torch.randn(4, 5), 0)
    with pytest.raises(ConfigError, match="temperatures"):
        SelfDistillationLoss(out_dim=5, student_temp=0.0)
