"""Self-distillation loss against direct computations; center EMA; temperature warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.losses import PatchDistillationLoss, SelfDistillationLoss, teacher_temperature


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


def _patch_direct(student, teacher, mask, center, t_temp, s_temp):
    """iBOT's patch loss by hand: per view, the mean over its masked patches; then the mean
    over views (a view without a masked patch adds zero)."""
    rows = []
    for r in range(student.shape[0]):
        terms = [
            -(torch.softmax((teacher[r, n] - center) / t_temp, 0)
              * torch.log_softmax(student[r, n] / s_temp, 0)).sum().item()
            for n in range(student.shape[1]) if mask[r, n]
        ]  # fmt: skip
        rows.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(rows) / len(rows)


def test_patch_loss_equals_direct_computation_over_masked_patches_only() -> None:
    g = torch.Generator().manual_seed(2)
    r, n, d = 4, 6, 5
    student = torch.randn(r, n, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(r, n, d, generator=g, dtype=torch.float64)
    mask = torch.rand(r, n, generator=g) < 0.5
    mask[0] = False  # a view the student saw whole
    mask[1, 0] = True
    loss_fn = PatchDistillationLoss(out_dim=d, teacher_temp=0.07, student_temp=0.1)
    center = torch.randn(d, generator=g)
    loss_fn.center.copy_(center.view(1, 1, d))
    loss = loss_fn(student, teacher, mask, step=0).item()
    assert loss == pytest.approx(_patch_direct(student, teacher, mask, center.double(), 0.07, 0.1),
                                 rel=1e-5)
    # what the student predicts at a visible patch does not matter
    changed = student.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), d, generator=g, dtype=torch.float64)
    loss_fn.center.copy_(center.view(1, 1, d))
    assert loss_fn(changed, teacher, mask, step=0).item() == pytest.approx(loss, rel=1e-6)


def test_patch_loss_gradient_reaches_only_masked_student_patches() -> None:
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, True, True]])
    PatchDistillationLoss(out_dim=4)(student, teacher, mask, 0).backward()
    assert teacher.grad is None
    norms = student.grad.abs().sum(-1)
    assert bool((norms[mask] > 0).all()) and bool((norms[~mask] == 0).all())


def test_patch_loss_center_follows_the_mean_over_all_patches() -> None:
    g = torch.Generator().manual_seed(3)
    loss_fn = PatchDistillationLoss(out_dim=4, center_momentum=0.8)
    c0 = torch.randn(1, 1, 4, generator=g)
    loss_fn.center.copy_(c0)
    teacher = torch.randn(3, 5, 4, generator=g)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    loss_fn(torch.randn(3, 5, 4, generator=g), teacher, mask, 0)
    expected = 0.8 * c0 + 0.2 * teacher.reshape(-1, 4).mean(0).view(1, 1, 4)
    torch.testing.assert_close(loss_fn.center, expected)


def test_patch_loss_shape_errors_say_what_was_expected() -> None:
    loss_fn = PatchDistillationLoss(out_dim=4)
    with pytest.raises(ConfigError, match="one shape"):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.ones(2, 3, dtype=torch.bool), 0)
    with pytest.raises(ConfigError, match="out_dim=4"):
        loss_fn(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), 0)
    with pytest.raises(ConfigError, match="mask"):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(3, 2, dtype=torch.bool), 0)
    with pytest.raises(ConfigError, match="temperatures"):
        PatchDistillationLoss(out_dim=4, teacher_temp=0.0)


def _chunks(t: torch.Tensor, views: int, parts: int) -> list[torch.Tensor]:
    """Micro-batches of a view-major ``(V·B, ...)`` tensor: images split, views kept."""
    per_view = t.chunk(views)  # V × (B, ...)
    return [torch.cat([v.chunk(parts)[i] for v in per_view]) for i in range(parts)]


def test_accumulating_center_moves_once_like_one_batch_of_all_micro_batches() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4 * 6, 16), torch.randn(2 * 6, 16)
    one = SelfDistillationLoss(out_dim=16, center_momentum=0.7)
    one.center.normal_()
    acc = SelfDistillationLoss(out_dim=16, center_momentum=0.7)
    acc.load_state_dict(one.state_dict())
    before = one.center.clone()
    whole = one(student, teacher)
    with acc.accumulating_center():
        parts = [acc(s, t) for s, t in zip(_chunks(student, 4, 3), _chunks(teacher, 2, 3),
                                          strict=True)]
        torch.testing.assert_close(acc.center, before)  # every micro-batch sees the old one
    torch.testing.assert_close(torch.stack(parts).mean(), whole)
    torch.testing.assert_close(acc.center, one.center)
    expected = 0.7 * before + 0.3 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(acc.center, expected)


def test_accumulating_patch_center_and_a_raising_block_moves_nothing() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5, 8), torch.randn(6, 5, 8)
    mask = torch.rand(6, 5) < 0.5
    one, acc = PatchDistillationLoss(out_dim=8), PatchDistillationLoss(out_dim=8)
    one(student, teacher, mask)
    with acc.accumulating_center():
        for i in range(3):
            acc(student[2 * i : 2 * i + 2], teacher[2 * i : 2 * i + 2], mask[2 * i : 2 * i + 2])
    torch.testing.assert_close(acc.center, one.center)

    before = acc.center.clone()
    with pytest.raises(ValueError, match="skipped"), acc.accumulating_center():
        acc(student, teacher, mask)
        raise ValueError("skipped step")
    torch.testing.assert_close(acc.center, before)
    acc(student, teacher, mask)  # outside a block: one update per call again
    assert not torch.equal(acc.center, before)
    with pytest.raises(RuntimeError, match="already open"), acc.accumulating_center():
        with acc.accumulating_center():
            pass
