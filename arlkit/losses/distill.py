"""Self-distillation losses: DINO's (a student matches an EMA teacher across views) and
iBOT's masked patch loss (:class:`PatchDistillationLoss`).

``L_SD = -Σ z_t log z_s`` averaged over every (teacher view, student view) pair of
*different* views, where ``z_t = softmax((t - c) / τ_t)`` is the centered, sharpened
teacher distribution (no gradient) and ``z_s = softmax(s / τ_s)`` the student's.
After the loss, the center ``c`` follows the mean teacher output with an EMA
(all-reduced across processes when ``torch.distributed`` is initialised). The
teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp``
over ``warmup_teacher_temp_steps`` steps.

Views are stacked view-major: ``(V·B, D)`` holds view 0 of every image, then view
1, ... The teacher sees the ``V_t`` global views; the student sees the same global
views first, in the same order, then any local views.

Example::

    loss_fn = SelfDistillationLoss(out_dim=65536, teacher_temp=0.07,
                                   warmup_teacher_temp=0.04, warmup_teacher_temp_steps=3000)
    loss = loss_fn(student_head(student(views)), teacher_head(teacher(globals)), step)

``step`` (the optimizer step) drives the warm-up; without a warm-up it may be left out.

With gradient accumulation, call the loss of every micro-batch inside
``with loss_fn.accumulating_center():``. Each call then uses the center from before the
block, and the center moves once on leaving it, by the mean over all the micro-batches, as
it would for one batch of them all. Otherwise it moves once per call, and ``k``
micro-batches make its momentum ``m^k`` per optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.errors import ConfigError
from arlkit.losses.masking import as_bool_mask

__all__ = ["PatchDistillationLoss", "SelfDistillationLoss", "teacher_temperature"]


def teacher_temperature(step: int, warmup_temp: float, temp: float, warmup_steps: int) -> float:
    """Linear warm-up of the teacher temperature, then constant.

    Args:
        step: current step (0-based).
        warmup_temp: temperature at step 0.
        temp: temperature from ``warmup_steps`` on.
        warmup_steps: length of the ramp; 0 means no warm-up.

    Returns:
        ``warmup_temp + (temp - warmup_temp) · step / warmup_steps`` during the ramp.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * max(step, 0) / warmup_steps


class _CenteredDistillation(nn.Module):
    """What DINO's and iBOT's losses share: a teacher temperature with a linear warm-up, a
    student temperature and a teacher center that follows the teacher outputs by EMA."""

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_steps: int,
        student_temp: float,
        center_momentum: float,
        center_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if out_dim <= 0:
            raise ConfigError(f"{name}: out_dim must be positive, got {out_dim}")
        if min(teacher_temp, warmup_teacher_temp, student_temp) <= 0:
            raise ConfigError(f"{name}: temperatures must be > 0")
        if not 0.0 <= center_momentum < 1.0:
            raise ConfigError(f"{name}: center_momentum must be in [0, 1), got {center_momentum}")
        if warmup_teacher_temp_steps < 0:
            raise ConfigError(f"{name}: warmup_teacher_temp_steps must be >= 0")
        self.out_dim = out_dim
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_steps = warmup_teacher_temp_steps
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(*center_shape, out_dim))
        self._pending: list[Tensor] | None = None  # (sum, count) while accumulating

    def teacher_temp_at(self, step: int | None) -> float:
        """Teacher temperature at ``step`` (see :func:`teacher_temperature`); ``None``: the
        temperature after the warm-up, allowed only when there is no warm-up.

        Raises:
            ConfigError: ``step`` is None but the loss has a warm-up to follow.
        """
        if step is None:
            if self.warmup_teacher_temp_steps > 0 and self.warmup_teacher_temp != self.teacher_temp:
                raise ConfigError(
                    f"{type(self).__name__}: pass step (the optimizer step): the teacher "
                    f"temperature warms up over {self.warmup_teacher_temp_steps} steps"
                )
            return self.teacher_temp
        return teacher_temperature(
            step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_steps
        )

    def teacher_probs(self, teacher_out: Tensor, step: int | None) -> Tensor:
        """``softmax((t - center) / τ_t)`` in float32, detached, over the last dimension."""
        t = (teacher_out.detach().float() - self.center) / self.teacher_temp_at(step)
        return F.softmax(t, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """``c ← m·c + (1-m)·mean(teacher_out)``, the mean over every output row of every
        process (all leading dimensions: views, and patches for iBOT). Inside
        :meth:`accumulating_center` the rows are only added to the pending mean.

        Args:
            teacher_out: ``(..., D)`` teacher outputs.
        """
        flat = teacher_out.detach().float().reshape(-1, teacher_out.shape[-1])
        batch_sum = flat.sum(dim=0)
        count = torch.tensor(float(flat.shape[0]), device=batch_sum.device)
        if self._pending is not None:
            if self._pending:
                batch_sum, count = batch_sum + self._pending[0], count + self._pending[1]
            self._pending = [batch_sum, count]
            return
        self._apply_center(batch_sum, count)

    @contextlib.contextmanager
    def accumulating_center(self) -> Iterator[None]:
        """One center update for all the calls inside the block (gradient accumulation).

        Every call inside uses the center from before the block. On leaving, the center
        moves once, by the mean teacher output over all the calls (one all-reduce), exactly
        as one call on all their rows would. If the block raises, the pending rows are
        dropped (a skipped step moves nothing).

        Raises:
            RuntimeError: the block is entered again while open.
        """
        if self._pending is not None:
            raise RuntimeError(f"{type(self).__name__}: accumulating_center is already open")
        self._pending = []
        try:
            yield
        except BaseException:
            self._pending = None
            raise
        pending, self._pending = self._pending, None
        if pending:
            self._apply_center(*pending)

    @torch.no_grad()
    def _apply_center(self, batch_sum: Tensor, count: Tensor) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = (batch_sum / count).view_as(self.center)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, teacher_temp={self.teacher_temp}, "
            f"warmup_teacher_temp={self.warmup_teacher_temp}, "
            f"warmup_teacher_temp_steps={self.warmup_teacher_temp_steps}, "
            f"student_temp={self.student_temp}, center_momentum={self.center_momentum}"
        )


class SelfDistillationLoss(_CenteredDistillation):
    """DINO cross-entropy between a centered, sharpened teacher and a student.

    Args:
        out_dim: number of prototypes ``D`` (the head's output size).
        teacher_temp: teacher temperature after the warm-up.
        warmup_teacher_temp: teacher temperature at step 0.
        warmup_teacher_temp_steps: steps of the linear teacher-temperature ramp.
        student_temp: student temperature.
        center_momentum: EMA momentum of the center.
        teacher_views: number of teacher (global) views ``V_t``.

    Raises:
        ConfigError: non-positive temperatures or dimensions, momentum outside [0, 1).
    """

    def __init__(
        self,
        out_dim: int = 65536,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_views: int = 2,
    ) -> None:
        super().__init__(out_dim, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps,
                         student_temp, center_momentum, center_shape=(1,))
        if teacher_views <= 0:
            raise ConfigError(
                f"SelfDistillationLoss: teacher_views must be positive, got {teacher_views}"
            )
        self.teacher_views = teacher_views

    def forward(self, student_out: Tensor, teacher_out: Tensor, step: int | None = None) -> Tensor:
        """Loss over all cross-view pairs, then the center update.

        Args:
            student_out: ``(V_s·B, D)`` student head outputs (logits), view-major; the
                first ``V_t`` views are the teacher's views in the same order.
            teacher_out: ``(V_t·B, D)`` teacher head outputs, view-major.
            step: current optimizer step, for the temperature warm-up (may be None
                without one).

        Returns:
            Scalar float32 tensor.

        Raises:
            ConfigError: shapes that do not fit ``out_dim`` and ``teacher_views``.
        """
        self._check(student_out, teacher_out)
        batch = teacher_out.shape[0] // self.teacher_views
        student_views = student_out.shape[0] // batch
        q = self.teacher_probs(teacher_out, step).chunk(self.teacher_views)  # V_t × (B, D)
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        log_p = log_p.chunk(student_views)  # V_s × (B, D)
        total = student_out.new_zeros((), dtype=torch.float32)
        pairs = 0
        for it, q_t in enumerate(q):
            for iv, log_p_s in enumerate(log_p):
                if iv == it:  # same view: trivially matched, carries no signal
                    continue
                total = total + (-(q_t * log_p_s).sum(dim=-1)).mean()
                pairs += 1
        if pairs == 0:
            raise ConfigError(
                "SelfDistillationLoss: no cross-view pair (one teacher view and one student "
                "view); give the student at least two views"
            )
        self.update_center(teacher_out)
        return total / pairs

    def _check(self, student_out: Tensor, teacher_out: Tensor) -> None:
        if student_out.ndim != 2 or teacher_out.ndim != 2:
            raise ConfigError(
                "SelfDistillationLoss: expected student_out (V_s*B, D) and teacher_out "
                f"(V_t*B, D), got {tuple(student_out.shape)} and {tuple(teacher_out.shape)}"
            )
        if student_out.shape[1] != self.out_dim or teacher_out.shape[1] != self.out_dim:
            raise ConfigError(
                f"SelfDistillationLoss: outputs have {student_out.shape[1]} and "
                f"{teacher_out.shape[1]} prototypes, the loss was built with out_dim={self.out_dim}"
            )
        n_t = teacher_out.shape[0]
        if n_t == 0 or n_t % self.teacher_views:
            raise ConfigError(
                f"SelfDistillationLoss: teacher_out has {n_t} rows, not a multiple of "
                f"teacher_views={self.teacher_views}"
            )
        batch = n_t // self.teacher_views
        if student_out.shape[0] % batch or student_out.shape[0] < n_t:
            raise ConfigError(
                f"SelfDistillationLoss: student_out has {student_out.shape[0]} rows; expected "
                f"V_s·B with B={batch} and V_s >= teacher_views={self.teacher_views}"
            )


class PatchDistillationLoss(_CenteredDistillation):
    """iBOT's masked patch self-distillation: the student predicts, at every masked patch
    of a view, the teacher's distribution for the same (unmasked) patch of that view.

    ``L = mean_r [ Σ_n m_rn · (-Σ_d z_t[r,n,d] log z_s[r,n,d]) / max(Σ_n m_rn, 1) ]`` where
    ``z_t = softmax((t - c) / τ_t)`` (centered, sharpened, no gradient) and
    ``z_s = softmax(s / τ_s)``; rows are views (``V·B``), so a row with no masked patch
    adds zero, as in iBOT. The center ``c`` follows the mean teacher output over all
    patches with an EMA (all-reduced across processes).

    Args:
        out_dim: prototypes of the patch head ``D``.
        teacher_temp: teacher temperature after the warm-up (iBOT: 0.07 for patches).
        warmup_teacher_temp: teacher temperature at step 0.
        warmup_teacher_temp_steps: steps of the linear ramp.
        student_temp: student temperature.
        center_momentum: EMA momentum of the center.

    Example::

        loss_fn = PatchDistillationLoss(out_dim=8192)
        loss = loss_fn(head(student_tokens), head_t(teacher_tokens), mask, step)
    """

    def __init__(
        self,
        out_dim: int = 8192,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__(out_dim, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps,
                         student_temp, center_momentum, center_shape=(1, 1))

    def forward(
        self, student_out: Tensor, teacher_out: Tensor, mask: Tensor, step: int | None = None
    ) -> Tensor:
        """Loss over the masked patches, then the center update.

        Args:
            student_out: ``(R, N, D)`` student patch logits (the masked views).
            teacher_out: ``(R, N, D)`` teacher patch logits of the same views unmasked.
            mask: ``(R, N)`` bool (or 0/1), True where the student's patch was masked.
            step: current optimizer step, for the temperature warm-up (may be None
                without one).

        Returns:
            Scalar float32 tensor.

        Raises:
            ConfigError: shapes that do not agree with each other or with ``out_dim``.
        """
        if student_out.ndim != 3 or student_out.shape != teacher_out.shape:
            raise ConfigError(
                "PatchDistillationLoss: expected student_out and teacher_out of one shape "
                f"(R, N, D), got {tuple(student_out.shape)} and {tuple(teacher_out.shape)}"
            )
        if student_out.shape[-1] != self.out_dim:
            raise ConfigError(
                f"PatchDistillationLoss: outputs have {student_out.shape[-1]} prototypes, the "
                f"loss was built with out_dim={self.out_dim}"
            )
        mask = as_bool_mask(mask, "PatchDistillationLoss")
        if tuple(mask.shape) != tuple(student_out.shape[:2]):
            raise ConfigError(
                f"PatchDistillationLoss: mask {tuple(mask.shape)} does not match the outputs' "
                f"(R, N) = {tuple(student_out.shape[:2])}"
            )
        q = self.teacher_probs(teacher_out, step)
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        per_patch = -(q * log_p).sum(dim=-1)  # (R, N)
        m = mask.to(per_patch.dtype)
        per_row = (per_patch * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)
        self.update_center(teacher_out)
        return per_row.mean()
