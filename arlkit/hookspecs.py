"""Hook specifications of arlkit (pluggy project ``arlkit``).

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names
are the hooks below. Third-party plugins are found through the entry-point group
``arlkit``; built-in components register through these very hooks.

Every ``arlkit_register_<kind>`` hook receives a :class:`~arlkit.registry.Registrar`
and calls ``register.add(name, factory)``; it returns nothing. All implementations
are called (none stops the call), each with a registrar that records its plugin.

Example::

    from arlkit.hookspecs import hookimpl

    @hookimpl
    def arlkit_register_conditioners(register):
        register.add("probe", ProbeConditioner)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from arlkit.registry import Registrar

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "arlkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def arlkit_register_conditioners(register: Registrar) -> None:
    """Register conditioners: organ information for a batch → context vector ``(B, C)``.

    Factories receive ``dim`` (the model width) and ``taxonomy`` from the builder.
    """


@hookspec
def arlkit_register_deform_ops(register: Registrar) -> None:
    """Register deformable sampling operators (see :mod:`arlkit.ops`)."""


@hookspec
def arlkit_register_offset_nets(register: Registrar) -> None:
    """Register offset networks ``g_θ`` of the ACDT block.

    Factories receive ``dim`` and ``num_points`` (``G·K``) from the builder.
    """


@hookspec
def arlkit_register_losses(register: Registrar) -> None:
    """Register loss modules (MIM, adversarial, self-distillation, ...).

    The losses registry is a catalogue (``arlkit list losses``, ``registry.build(name)`` from
    your own code); a recipe's ``objectives:`` names objectives, so a loss is trained by a
    recipe through an objective registered with :func:`arlkit_register_objectives`.
    """


@hookspec
def arlkit_register_balancers(register: Registrar) -> None:
    """Register loss balancers (adaptive gradient-norm ratio, fixed weights, ...)."""


@hookspec
def arlkit_register_backbones(register: Registrar) -> None:
    """Register backbones.

    Factories receive ``taxonomy`` and the ``(name, params)`` pairs ``conditioner``,
    ``deform_op`` and ``offset_net`` from the builder.
    """


@hookspec
def arlkit_register_heads(register: Registrar) -> None:
    """Register heads (decoders, projection heads, classifiers). Factories receive ``in_dim``.

    Like the losses registry, a catalogue for code that builds heads by name; the built-in
    objectives build their own heads, and a recipe swaps a head by naming an objective.
    """


@hookspec
def arlkit_register_datasets(register: Registrar) -> None:
    """Register datasets. Factories receive ``taxonomy`` from the builder."""


@hookspec
def arlkit_register_transforms(register: Registrar) -> None:
    """Register view transforms (multi-crop, augmentation). Factories receive ``taxonomy``."""


@hookspec
def arlkit_register_objectives(register: Registrar) -> None:
    """Register training objectives: what the engine optimises, named in ``objectives:``.

    Factories receive ``context`` (an :class:`arlkit.engine.objectives.ObjectiveContext`)
    so that a plugin's objective can be trained without touching the engine.
    """
