"""Training objectives: what the engine optimises, chosen by the recipe's ``objectives:`` list.

An objective owns its modules and computes one scalar loss from a :class:`Step`. The
engine knows no objective by name: it calls the methods of :class:`Objective`, so a
plugin registers its own objective (hook ``arlkit_register_objectives``; the factory
receives ``context``) and trains it without touching the engine.

Built-ins: ``mim`` (masked image modelling), ``speckle_gan`` (the adversarial term;
needs ``mim``), ``self_distillation`` (DINO with an EMA teacher); beyond the paper,
``patch_distillation`` (iBOT's masked patch distillation) and ``koleo`` (DINOv2's KoLeo).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from arlkit.engine.step import Step
from arlkit.errors import ConfigError

__all__ = ["Objective", "ObjectiveContext"]


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may know about the run when it is built.

    Attributes:
        embed_dim: backbone width C.
        patch_size: P.
        in_chans: image channels.
        num_prefix_tokens: leading non-patch tokens of the backbone output.
        sparse_encoder: the backbone drops masked tokens (MAE) instead of masking them.
        grid: patch grid of the global views.
        n_global, n_local: views per image.
        total_steps, steps_per_epoch: schedule lengths.
        objectives: names of all objectives of the recipe (for requirements).
        taxonomy: the recipe's organ taxonomy (:class:`arlkit.taxonomy.Taxonomy`).
        clean_global: the views also give the un-augmented global crops
            (:attr:`Step.global_clean`).
    """

    embed_dim: int
    patch_size: int
    in_chans: int
    num_prefix_tokens: int
    sparse_encoder: bool
    grid: tuple[int, int]
    n_global: int
    n_local: int
    total_steps: int
    steps_per_epoch: int
    objectives: tuple[str, ...]
    taxonomy: Any = None
    clean_global: bool = False


class Objective(nn.Module):
    """Base class of objectives.

    Trainable heads are made by :meth:`build_heads`; the engine puts them into the
    student as ``student.heads[name]`` (so they are trained, synchronised and copied
    into the EMA teacher with the backbone) and objectives reach them through the
    ``student``/``teacher`` they are given. Submodules in :attr:`aux` are state the
    objective trains or keeps itself (a discriminator, a loss's running center); they
    are checkpointed. Subclasses implement :meth:`loss`; the other methods are hooks.
    """

    #: names of objectives that must also be in the recipe (e.g. ``speckle_gan`` needs ``mim``)
    requires: tuple[str, ...] = ()
    #: whether the engine must keep an EMA teacher of the student
    needs_teacher: bool = False

    def __init__(self, context: ObjectiveContext) -> None:
        super().__init__()
        self.context = context
        self.aux = nn.ModuleDict()
        self.name = ""  # set by the engine to the recipe name
        self.weight = 1.0
        missing = [r for r in self.requires if r not in context.objectives]
        if missing:
            raise ConfigError(
                f"objective {type(self).__name__} needs the objective(s) {', '.join(missing)} "
                "in the recipe's objectives list"
            )

    def build_heads(self) -> nn.ModuleDict:
        """Trainable modules that belong to the student (decoders, projection heads)."""
        return nn.ModuleDict()

    def make_mask(self, batch_rows: int, generator: torch.Generator) -> Tensor | None:
        """The MIM mask ``(batch_rows, N)`` of the global views, or None (no masking)."""
        return None

    @property
    def draws_mask(self) -> bool:
        """Whether this objective draws the step's mask (at most one per recipe may)."""
        return type(self).make_mask is not Objective.make_mask

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        """Scalar loss of this micro-step (before the recipe weight)."""
        raise NotImplementedError

    def teacher_forward(self, step: Step, teacher: nn.Module) -> None:
        """Fill ``step.teacher[self.name]`` from the EMA teacher (called under no_grad)."""

    def balance_parameter(self, student: nn.Module) -> Tensor | None:
        """The shared parameter the balancer measures gradients against, if this objective has it."""
        return None

    def after_backward(self, step: Step, student: nn.Module) -> None:
        """Edit gradients before the optimizer step (e.g. freeze a last layer for a while)."""

    def auxiliary_step(self, step: Step, autocast: Any) -> dict[str, float]:
        """Train auxiliary modules after the main step (e.g. the discriminator); returns logs.

        Called once per micro-batch, inside :meth:`accumulating`."""
        return {}

    def accumulating(self) -> contextlib.AbstractContextManager[Any]:
        """A context the engine holds open over the micro-batches of one optimizer step.

        State that belongs to the optimizer step rather than to a micro-batch moves when it
        closes, so that ``optim.accum_steps`` micro-batches act as one batch of them all
        (the distillation center, the discriminator's optimizer step). The context sees an
        exception when the step is skipped (a non-finite loss or gradient) and then moves
        nothing. The default holds nothing.
        """
        return contextlib.nullcontext()

    def aux_state_dict(self) -> dict[str, Any]:
        """Non-module state (auxiliary optimizers), loadable with ``weights_only=True``."""
        return {}

    def load_aux_state_dict(self, state: dict[str, Any]) -> None:
        del state
