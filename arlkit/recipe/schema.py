"""The recipe schema: pydantic models with ``extra="forbid"`` for every section.

A recipe is flat and complete: each component is ``{name: ..., params: {...}}``
and is checked against its registry *after* plugins load (pass the registries in
the validation context, as :func:`arlkit.recipe.load_recipe` does). Without a
context only the structure is checked (used for ``arlkit schema``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import InitErrorDetails

from arlkit.taxonomy import DEFAULT_ORGANS, Taxonomy

__all__ = [
    "BackboneSpec",
    "BalancerSpec",
    "ComponentSpec",
    "ConditionerSpec",
    "DataConfig",
    "DatasetSpec",
    "DeformOpSpec",
    "ModelConfig",
    "ObjectiveSpec",
    "OffsetNetSpec",
    "OptimConfig",
    "ParamsError",
    "Recipe",
    "TaxonomyConfig",
    "TeacherConfig",
    "TrainConfig",
    "TransformSpec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class ParamsError(ValueError):
    """Invalid ``params`` of a component; carries pydantic's errors for rendering."""

    def __init__(self, error: pydantic.ValidationError, model: type[BaseModel]) -> None:
        self.error, self.model = error, model
        super().__init__(str(error))


class ComponentSpec(_Strict):
    """A registered component chosen by ``name`` with its ``params``."""

    kind: ClassVar[str] = ""
    name: str = Field(description="registered component name (see `arlkit list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the component's parameters")

    @model_validator(mode="after")
    def _check_registered(self, info: ValidationInfo) -> ComponentSpec:
        registries = (info.context or {}).get("registries")
        if registries is None or not self.kind:
            return self
        entry = registries[self.kind].get(self.name)  # UnknownComponentError is a ValueError
        try:
            validated = entry.params.model_validate(self.params)
        except pydantic.ValidationError as exc:
            raise ParamsError(exc, entry.params) from None
        self.params = validated.model_dump(mode="json")
        return self


class ConditionerSpec(ComponentSpec):
    kind: ClassVar[str] = "conditioners"


class DeformOpSpec(ComponentSpec):
    kind: ClassVar[str] = "deform_ops"


class OffsetNetSpec(ComponentSpec):
    kind: ClassVar[str] = "offset_nets"


class BalancerSpec(ComponentSpec):
    kind: ClassVar[str] = "balancers"


class BackboneSpec(ComponentSpec):
    kind: ClassVar[str] = "backbones"


class HeadSpec(ComponentSpec):
    kind: ClassVar[str] = "heads"


class DatasetSpec(ComponentSpec):
    kind: ClassVar[str] = "datasets"


class TransformSpec(ComponentSpec):
    kind: ClassVar[str] = "transforms"


class ObjectiveSpec(ComponentSpec):
    """One training objective; ``weight`` multiplies its loss in the total."""

    kind: ClassVar[str] = "objectives"
    weight: float = Field(1.0, ge=0.0, description="weight of this objective in the total loss")


class TaxonomyConfig(_Strict):
    organs: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ORGANS),
        description="organ classes in index order; 'unknown' is implicit and last",
    )

    @model_validator(mode="after")
    def _valid(self) -> TaxonomyConfig:
        Taxonomy(tuple(self.organs))  # raises ConfigError (a ValueError) with the reason
        return self

    def build(self) -> Taxonomy:
        return Taxonomy(tuple(self.organs))


class ModelConfig(_Strict):
    backbone: BackboneSpec = Field(
        default_factory=lambda: {"name": "avit"},
        description="the encoder",
    )
    conditioner: ConditionerSpec = Field(
        default_factory=lambda: {"name": "onehot"},
        description="organ label → anatomical context vector, one per block",
    )
    deform_op: DeformOpSpec = Field(
        default_factory=lambda: {"name": "reference"},
        description="deformable sampling operator of the ACDT blocks",
    )
    offset_net: OffsetNetSpec = Field(
        default_factory=lambda: {"name": "dwconv"},
        description="offset network g_theta of the ACDT blocks",
    )


class DataConfig(_Strict):
    dataset: DatasetSpec = Field(
        default_factory=lambda: {"name": "synthetic"},
        description="training images (default: the embedded synthetic corpus)",
    )
    views: TransformSpec = Field(
        default_factory=lambda: {"name": "multicrop"},
        description="views per image (global crops for MIM, plus local crops for distillation)",
    )
    batch_size: int = Field(64, gt=0, description="images per optimizer step, all processes")
    num_workers: int = Field(0, ge=0, description="data loader worker processes per rank")
    sampler_temperature: float = Field(
        1.0, ge=0.0, le=1.0, description="organ balance: 1 natural frequencies, 0 uniform"
    )


_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]

#: keys earlier versions accepted → what replaces them
_MOVED_OPTIM_KEYS = {
    "disc_lr": "disc_lr is not an optim setting: the discriminator's learning rate is "
               "objectives.speckle_gan.params.lr",
}


class OptimConfig(_Strict):
    lr: float = Field(1.5e-4, gt=0, description="peak learning rate per 256 images (scaled)")
    min_lr: float = Field(1e-6, ge=0, description="final learning rate of the cosine schedule")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.95), description="AdamW's betas, each in [0, 1)")
    grad_clip: float | None = Field(3.0, gt=0, description="max gradient norm; null disables")
    grad_clip_mode: Literal["global", "per_parameter"] = Field(
        "global", description="bound the norm of all gradients together (DINOv2) or of each "
        "parameter's on its own (DINO, iBOT)")
    accum_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")

    @model_validator(mode="wrap")
    @classmethod
    def _moved_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        moved = [k for k in _MOVED_OPTIM_KEYS if isinstance(data, dict) and k in data]
        if not moved:
            return handler(data)
        # reported beside the section's other problems, not instead of them
        errors: list[InitErrorDetails] = [
            {"type": "value_error", "loc": (), "input": data[k],
             "ctx": {"error": ValueError(_MOVED_OPTIM_KEYS[k])}}
            for k in moved
        ]
        try:
            handler({k: v for k, v in data.items() if k not in moved})
        except pydantic.ValidationError as exc:
            errors += [{"type": e["type"], "loc": e["loc"], "input": e["input"],
                        **({"ctx": e["ctx"]} if "ctx" in e else {})}  # type: ignore[typeddict-item]
                       for e in exc.errors(include_url=False)]
        raise pydantic.ValidationError.from_exception_data(cls.__name__, errors)


class TeacherConfig(_Strict):
    """EMA teacher (kept when an objective needs one, e.g. self-distillation)."""

    momentum: float = Field(0.996, ge=0.0, le=1.0, description="EMA momentum at step 0")
    momentum_end: float = Field(1.0, ge=0.0, le=1.0, description="EMA momentum at the end (cosine)")


class TrainConfig(_Strict):
    steps: int = Field(1000, gt=0, description="optimizer steps")
    precision: Literal["fp32", "bf16"] = "bf16"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(500, gt=0)
    keep_last: int = Field(2, gt=0, description="checkpoints kept in the run directory")
    max_nonfinite: int = Field(
        5, gt=0, description="consecutive non-finite steps before the run stops"
    )
    tensorboard: bool = False
    export: bool = True


class Recipe(_Strict):
    """A complete pretraining (or evaluation) configuration."""

    name: str = Field("recipe", description="run name")
    seed: int = 0
    run_dir: str = Field("runs/{name}", description="where outputs go; {name} is substituted")
    taxonomy: TaxonomyConfig = Field(default_factory=dict)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=dict)  # type: ignore[arg-type]
    objectives: list[ObjectiveSpec] = Field(
        default_factory=list, description="what is trained; at least one", min_length=1
    )
    balancer: BalancerSpec = Field(default_factory=lambda: {"name": "fixed"})
    data: DataConfig = Field(default_factory=dict)  # type: ignore[arg-type]
    optim: OptimConfig = Field(default_factory=dict)  # type: ignore[arg-type]
    teacher: TeacherConfig = Field(default_factory=dict)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=dict)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _accum_divides_batch(self) -> Recipe:
        batch, accum = self.data.batch_size, self.optim.accum_steps
        if batch % accum:
            raise ValueError(
                f"optim.accum_steps={accum} does not divide data.batch_size={batch}: each "
                f"optimizer step splits the batch into {accum} equal micro-batches; choose a "
                f"divisor of {batch} (or a batch size that is a multiple of {accum})"
            )
        return self

    @model_validator(mode="after")
    def _unique_objectives(self) -> Recipe:
        seen: set[str] = set()
        for obj in self.objectives:
            if obj.name in seen:
                raise ValueError(f"objective {obj.name!r} is listed twice in objectives")
            seen.add(obj.name)
        return self

    def resolved_run_dir(self) -> str:
        return self.run_dir.replace("{name}", self.name)
