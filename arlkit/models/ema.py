"""Exponential moving average of parameters: the teacher of self-distillation.

``θ_t ← m·θ_t + (1 - m)·θ_s`` over parameters, with the momentum ``m`` following a cosine
schedule from ``base`` to ``final`` (DINO: 0.996 → 1). Buffers (batch-norm statistics) are
the teacher's own, or copied from the student with ``copy_buffers=True`` — what a teacher
kept in eval mode needs, as arlkit's trainer keeps it.

Example::

    teacher = copy.deepcopy(student).requires_grad_(False)
    ...
    ema_update(teacher, student, cosine_momentum(step, total_steps))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arlkit.errors import ConfigError

__all__ = ["cosine_momentum", "ema_update"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float,
               copy_buffers: bool = False) -> None:
    """In-place ``teacher ← momentum·teacher + (1 - momentum)·student`` over parameters.

    Parameters are paired in registration order (so a student wrapped in
    ``DistributedDataParallel`` pairs with its bare teacher); shapes must match.

    Args:
        teacher: updated in place, no autograd.
        student: read only.
        momentum: in ``[0, 1]``; 1 leaves the teacher's parameters unchanged.
        copy_buffers: also copy the student's buffers (paired in order) into the teacher.

    Raises:
        ConfigError: momentum out of range, or the two modules' parameters differ.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ConfigError(
            f"ema_update: teacher has {len(t_params)} parameters, student {len(s_params)}; "
            "the teacher must be a copy of the student"
        )
    for i, (t, s) in enumerate(zip(t_params, s_params)):
        if t.shape != s.shape:
            raise ConfigError(
                f"ema_update: parameter {i} has shape {tuple(t.shape)} in the teacher and "
                f"{tuple(s.shape)} in the student"
            )
    if t_params:
        s_cast = [s.detach().to(t.dtype) for t, s in zip(t_params, s_params)]
        # lerp: t + w·(s - t) = (1 - w)·t + w·s with w = 1 - momentum; one fused kernel per group
        torch._foreach_lerp_(t_params, s_cast, 1.0 - momentum)
    if copy_buffers:
        t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
        if [b.shape for b in t_bufs] != [b.shape for b in s_bufs]:
            raise ConfigError("ema_update: the teacher's buffers do not match the student's")
        for t, s in zip(t_bufs, s_bufs):
            t.copy_(s)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule of the EMA momentum.

    Args:
        step: current step (clamped to ``[0, total_steps]``).
        total_steps: length of the schedule.
        base: momentum at step 0.
        final: momentum at ``total_steps``.

    Returns:
        ``final - (final - base) · (1 + cos(π·step/total_steps)) / 2``.

    Raises:
        ConfigError: ``total_steps`` < 1.
    """
    if total_steps < 1:
        raise ConfigError(f"cosine_momentum: total_steps must be >= 1, got {total_steps}")
    t = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (1 + math.cos(math.pi * t)) / 2
