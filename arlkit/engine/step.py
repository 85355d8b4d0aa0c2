"""What one training micro-step hands to every objective.

The student backbone runs once per view kind (masked global views, local views) and
its outputs are shared by all objectives (SimMIM/iBOT style: MIM and
self-distillation read the same student pass). Views are laid out view-major:
row ``v·B + b`` is view ``v`` of image ``b``, the convention of DINO's chunked losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["Step"]


@dataclass
class Step:
    """Inputs and shared intermediate results of one micro-step.

    Attributes:
        index: optimizer step (0-based), for schedules and warm-ups.
        epoch: epoch of the sampler.
        global_views: ``(V_g·B, C, S, S)`` global crops, view-major.
        local_views: ``(V_l·B, C, s, s)`` local crops, or None.
        organ: ``(B,)`` organ indices of the images (taxonomy; unknown = K).
        mask: ``(V_g·B, N)`` bool MIM mask of the global views (True = masked), or None.
        grid: patch grid ``(H, W)`` of the global views.
        n_global, n_local: views per image.
        global_clean: ``(V_g·B, C, S, S)`` the global crops before intensity augmentation
            (views with ``clean_global: true``), or None.
        side: per-image side information ``(B, ...)`` the backbone's conditioners read
            beside the organ (e.g. ``probe``; :mod:`arlkit.data.condition`); empty when
            they read the organ alone.
        teacher: outputs of the EMA teacher, keyed by objective (no gradient).
        cache: student outputs shared between objectives.
        teacher_cache: teacher backbone outputs shared between objectives.
    """

    index: int
    epoch: int
    global_views: Tensor
    local_views: Tensor | None
    organ: Tensor
    mask: Tensor | None
    grid: tuple[int, int]
    n_global: int
    n_local: int
    global_clean: Tensor | None = None
    side: dict[str, Tensor] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    teacher_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.organ.shape[0]

    def organ_for(self, n_views: int) -> Tensor:
        """Organ indices repeated for ``n_views`` view-major views: ``(n_views·B,)``."""
        return self.organ.repeat(n_views)

    def condition_for(self, n_views: int) -> Tensor | dict[str, Tensor]:
        """What the backbone takes as ``organ`` for ``n_views`` view-major views: the organ
        indices, or a condition mapping with the side information, repeated alike."""
        if not self.side:
            return self.organ_for(n_views)
        repeat = {k: v.repeat(n_views, *(1,) * (v.dim() - 1)) for k, v in self.side.items()}
        return {"organ": self.organ_for(n_views), **repeat}

    def student_global(self, student: nn.Module) -> Tensor:
        """Student tokens of the (masked) global views ``(V_g·B, 1+T, C)``, computed once."""
        if "global" not in self.cache:
            self.cache["global"] = student.backbone.forward_features(
                self.global_views, self.condition_for(self.n_global), mask=self.mask
            )
        return self.cache["global"]

    def teacher_global(self, teacher: nn.Module) -> Tensor:
        """Teacher tokens of the unmasked global views ``(V_g·B, 1+T, C)``, computed once.

        Called from :meth:`Objective.teacher_forward` (under ``no_grad``), so objectives
        that read the teacher's class token and those that read its patch tokens share
        one teacher pass.
        """
        if "global" not in self.teacher_cache:
            self.teacher_cache["global"] = teacher.backbone.forward_features(
                self.global_views, self.condition_for(self.n_global)
            )
        return self.teacher_cache["global"]

    def student_local(self, student: nn.Module) -> Tensor | None:
        """Student tokens of the local views ``(V_l·B, 1+n, C)``, computed once (None if none)."""
        if self.local_views is None:
            return None
        if "local" not in self.cache:
            self.cache["local"] = student.backbone.forward_features(
                self.local_views, self.condition_for(self.n_local)
            )
        return self.cache["local"]
