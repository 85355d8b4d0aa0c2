"""Assemble everything a run needs from a validated recipe (no side effects beyond memory)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from arlkit.data.condition import check_condition_keys, condition_keys
from arlkit.engine.export import backbone_config, build_backbone
from arlkit.engine.objectives import Objective, ObjectiveContext
from arlkit.errors import ConfigError, DataError, closest
from arlkit.recipe import Recipe
from arlkit.registry import Registries, default_registries

__all__ = ["Components", "Student", "build_components"]


class Student(nn.Module):
    """The trained network: the backbone plus every objective's heads.

    ``forward(step, objectives)`` returns each objective's loss, so the whole student
    computation runs inside one (DDP-wrappable) forward call.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.ModuleDict]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, step: Any, objectives: list[Objective]) -> dict[str, torch.Tensor]:
        return {obj.name: obj.loss(step, self) for obj in objectives}


@dataclass
class Components:
    recipe: Recipe
    taxonomy: Any
    student: Student
    teacher: Student | None
    objectives: list[Objective]
    balancer: Any
    dataset: Any
    views: Any
    context: ObjectiveContext
    config: dict[str, Any]


def _views_layout(views: Any, patch_size: int) -> tuple[int, int, int]:
    """(n_global, n_local, global_size) of a views transform."""
    n_global = int(getattr(views, "n_global", 1))
    n_local = int(getattr(views, "n_local", 0))
    size = int(views.global_size)
    if size % patch_size:
        raise ConfigError(
            f"data.views: global_size {size} is not a multiple of the patch size {patch_size}"
        )
    return n_global, n_local, size


@contextlib.contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix a bad value found while building with its recipe path (values checked only by
    the component's constructor, e.g. ``mask_ratio`` outside (0, 1))."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(f"{where}"):
            raise
        raise ConfigError(f"{where}: {exc}") from exc
    except DataError as exc:  # e.g. a dataset's missing manifest: say which setting names it
        if str(exc).startswith(f"{where}"):
            raise
        raise DataError(f"{where}: {exc}") from exc


def _check_balancer_names(balancer: Any, names: tuple[str, ...]) -> None:
    """The losses a balancer names must be objectives of the recipe: a misspelt ``adaptive``
    would otherwise leave that loss at weight 1 without a word."""
    for attr, required in (("reference", True), ("adaptive", False)):
        value = getattr(balancer, attr, None)
        if not isinstance(value, str) or value in names:
            continue
        hint = closest(value, names)
        if required or hint:
            raise ConfigError(
                f"balancer.params.{attr}: no objective named {value!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (objectives: {', '.join(names)})"
            )


def _check_cancelled_weights(balancer: Any, recipe: Recipe) -> None:
    """A recipe weight that the balancer cancels (``gradnorm_ratio`` rescales its adaptive
    loss's gradient to the reference's) would do nothing: refuse it, naming the knob that
    works."""
    for attr in getattr(balancer, "cancels_weight_of", ()):
        name = getattr(balancer, attr, None)
        for i, spec in enumerate(recipe.objectives):
            if spec.name == name and spec.weight not in (0.0, 1.0):  # 0 switches it off
                knob = ("balancer.params.scale (λ = scale · ratio)" if hasattr(balancer, "scale")
                        else "the balancer's parameters")
                raise ConfigError(
                    f"objectives[{i}].weight: {spec.weight:g} has no effect on {name!r}: balancer "
                    f"{recipe.balancer.name!r} rescales its gradient to its reference loss's, so a "
                    f"fixed weight cancels out; leave the weight at 1 and set {knob} instead"
                )


def build_components(
    recipe: Recipe, registries: Registries | None = None, source: str | None = None
) -> Components:
    """Build backbone, objectives, teacher, balancer, dataset and views of ``recipe``.

    Args:
        recipe: the validated recipe.
        registries: where names are looked up (the default registries when None).
        source: the recipe's file, named first in error messages when given.

    Raises:
        ConfigError: a parameter value a component rejects; the message starts with its
            recipe path (``[source: ]objectives[0].params: ...``).
        DataError: the dataset cannot be read (the message names the file).
    """
    if source is None:
        return _build(recipe, registries)
    with _at(source):
        return _build(recipe, registries)


def _build(recipe: Recipe, registries: Registries | None) -> Components:
    registries = registries or default_registries
    taxonomy = recipe.taxonomy.build()
    config = backbone_config(recipe)
    with _at("model"):
        backbone = build_backbone(config, registries)
    with _at("model.conditioner"):
        check_condition_keys(condition_keys(backbone),
                             f"conditioner {recipe.model.conditioner.name!r}")
    with _at("data.dataset.params"):
        dataset = registries.datasets.build(
            recipe.data.dataset.name, recipe.data.dataset.params, taxonomy=taxonomy
        )
    with _at("data.views.params"):
        views = registries.transforms.build(
            recipe.data.views.name, recipe.data.views.params, taxonomy=taxonomy
        )
    patch = int(backbone.patch_size)
    n_global, n_local, size = _views_layout(views, patch)
    names = tuple(o.name for o in recipe.objectives)
    context = ObjectiveContext(
        embed_dim=int(backbone.embed_dim),
        patch_size=patch,
        in_chans=int(getattr(backbone, "in_chans", 1)),
        num_prefix_tokens=int(getattr(backbone, "num_prefix_tokens", 1)),
        sparse_encoder=getattr(backbone, "mask_mode", "token") == "drop",
        grid=(size // patch, size // patch),
        n_global=n_global,
        n_local=n_local,
        total_steps=recipe.train.steps,
        steps_per_epoch=max(len(dataset) // recipe.data.batch_size, 1),
        objectives=names,
        taxonomy=taxonomy,
        clean_global=bool(getattr(views, "clean_global", False)),
    )
    objectives: list[Objective] = []
    for i, spec in enumerate(recipe.objectives):
        with _at(f"objectives[{i}].params ({spec.name})"):
            obj = registries.objectives.build(spec.name, spec.params, context=context)
        if not isinstance(obj, Objective):
            raise ConfigError(
                f"objective {spec.name!r} built a {type(obj).__name__}, not an "
                "arlkit.engine.objectives.Objective"
            )
        obj.name, obj.weight = spec.name, spec.weight
        objectives.append(obj)
    masks = [o.name for o in objectives if o.draws_mask]
    if len(masks) > 1:
        raise ConfigError(f"objectives {', '.join(masks)} both define the MIM mask; keep one")
    student = Student(backbone, {o.name: o.build_heads() for o in objectives})
    teacher = None
    if any(o.needs_teacher for o in objectives):
        # a deterministic teacher, as in DINO (built without drop path): eval mode turns off
        # stochastic depth, dropout and conditioning dropout; its buffers follow the student's
        teacher = copy.deepcopy(student).requires_grad_(False).eval()
    with _at("balancer.params"):
        balancer = registries.balancers.build(recipe.balancer.name, recipe.balancer.params)
    _check_balancer_names(balancer, names)
    _check_cancelled_weights(balancer, recipe)
    return Components(recipe, taxonomy, student, teacher, objectives, balancer, dataset,
                      views, context, config)
