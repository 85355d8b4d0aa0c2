"""Step schedules: cosine with linear warm-up (learning rate, weight decay, teacher momentum).

Schedules are pure functions of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

__all__ = ["cosine"]


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0,
           warmup_start: float = 0.0) -> float:
    """Value at ``step`` of a linear warm-up ``warmup_start → start`` over ``warmup`` steps,
    then a half-cosine ``start → end`` until ``total``; ``end`` afterwards.

    Args:
        step: 0-based step.
        total: schedule length in steps (> 0).
        start: value after the warm-up (the peak).
        end: final value.
        warmup: warm-up steps (< total).
        warmup_start: value at step 0 when ``warmup > 0``.
    """
    if total <= 0:
        raise ValueError(f"schedule length must be positive, got {total}")
    warmup = min(warmup, total - 1) if total > 1 else 0
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / warmup
    span = max(total - warmup - 1, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))
