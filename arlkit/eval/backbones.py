"""Resolve the ``--backbone`` argument of the evaluation commands to a frozen-ready model.

Accepted forms:

- an exported file (``arlkit export``): ``backbone.safetensors`` or any fsspec URL;
- a run directory (holds ``recipe.resolved.yaml``): the teacher backbone of its latest
  complete checkpoint (the student when the run has no teacher);
- ``random``: the architecture of ``--arch`` (a recipe or an export; default
  ``recipes/quickstart.yaml``), freshly initialised from ``--seed`` — the baseline that a
  pretrained backbone must beat under the same protocol; ``random:N`` initialises from
  seed ``N`` instead and leaves ``--seed`` to the protocol (label subsets, probe, bootstrap),
  so several random inits can be compared with a pretrained backbone on identical splits;
- ``timm:NAME[:WEIGHTS]``: a timm model with one input channel and a local weights file
  (safetensors or a torch checkpoint); nothing is ever downloaded.

Every resolved model follows the backbone contract (``forward_features(x, organ)``,
``forward_intermediates(x, organ, ...)``, ``embed_dim``, ``patch_size``,
``num_prefix_tokens``, ``taxonomy``); timm models are wrapped by :class:`TimmBackbone`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from arlkit.errors import ArlkitError, ConfigError, closest
from arlkit.eval.timm_backbone import TimmBackbone, load_timm_weights

__all__ = [
    "DEFAULT_ARCH",
    "ResolvedBackbone",
    "TimmBackbone",
    "backbone_fingerprint",
    "checkpoint_backbone",
    "has_teacher",
    "resolve_backbone",
    "unsaved_buffers",
]

#: Architecture of ``--backbone random`` when ``--arch`` is not given (relative to the cwd).
DEFAULT_ARCH = "recipes/quickstart.yaml"


@dataclass
class ResolvedBackbone:
    """A backbone ready for evaluation and what it came from.

    Attributes:
        model: the backbone, in eval mode, on CPU.
        name: short name for output directories and tables (``random``, the run's name...).
        kind: ``export``, ``run``, ``random`` or ``timm``.
        source: the resolved path or model name.
        info: extra provenance (checkpoint step, architecture file, ...), JSON-serialisable.
    """

    model: nn.Module
    name: str
    kind: str
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def _exists(path: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root))


def _is_dir(path: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.isdir(root))


def _stem(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base.split(".", 1)[0] or "backbone"


def _from_run(run_dir: str) -> ResolvedBackbone:
    import fsspec
    import yaml

    from arlkit.engine import checkpoint as ckpt
    from arlkit.engine.export import backbone_config
    from arlkit.recipe import validate_recipe

    recipe_file = f"{run_dir.rstrip('/')}/recipe.resolved.yaml"
    if not _exists(recipe_file):
        raise ConfigError(
            f"--backbone {run_dir}: a directory but not an arlkit run (no recipe.resolved.yaml); "
            "pass a run directory, an exported .safetensors file, 'random' or 'timm:NAME'"
        )
    path = ckpt.find_latest(run_dir)
    if path is None:
        raise ArlkitError(
            f"--backbone {run_dir}: the run has no complete checkpoint under "
            f"{run_dir.rstrip('/')}/checkpoints; train it longer or pass its exported backbone"
        )
    with fsspec.open(recipe_file, "r") as handle:
        recipe = validate_recipe(yaml.safe_load(handle.read()), recipe_file)
    tensors, state, _ = ckpt.read_checkpoint(path)
    which = "teacher" if has_teacher(tensors) else "student"  # no teacher without distillation
    model = checkpoint_backbone(tensors, which, backbone_config(recipe))
    step = int(state.get("step", -1))
    return ResolvedBackbone(model.eval(), _stem(run_dir), "run", run_dir,
                            {"checkpoint": path, "weights": which, "step": step})


def has_teacher(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether checkpoint tensors hold a teacher backbone (runs with self-distillation)."""
    return any(k.startswith("teacher.backbone.") for k in tensors)


def checkpoint_backbone(tensors: dict[str, torch.Tensor], which: str,
                        config: dict[str, Any]) -> nn.Module:
    """The ``which`` (``teacher`` or ``student``) backbone of checkpoint tensors, in eval mode.

    Args:
        tensors: from :func:`arlkit.engine.checkpoint.read_checkpoint`.
        which: ``teacher`` or ``student``.
        config: the backbone's architecture (:func:`arlkit.engine.export.backbone_config`).
    """
    from arlkit.engine.export import build_backbone

    prefix = f"{which}.backbone."
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model = build_backbone(config)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _random(arch: str | None, seed: int, spec: str = "random") -> ResolvedBackbone:
    """``random`` initialised from ``seed``, or ``random:N`` from ``N``."""
    from arlkit.engine.export import backbone_config, build_backbone, read_export

    name = "random"
    if spec != "random":
        text = spec[len("random:"):]
        if not text.isdigit():
            raise ConfigError(
                f"--backbone {spec}: the initialisation seed must be a non-negative integer, "
                "e.g. random:1 (plain 'random' takes it from --seed)"
            )
        seed = int(text)
        name = f"random-{seed}"
    arch = arch or DEFAULT_ARCH
    if not _exists(arch):
        raise ConfigError(
            f"--backbone {spec}: architecture file {arch!r} does not exist (relative to "
            f"{os.getcwd()}); pass --arch RECIPE.yaml or --arch EXPORT.safetensors"
        )
    if arch.endswith(".safetensors"):
        _, config, _ = read_export(arch)
    else:
        from arlkit.recipe import load_recipe

        config = backbone_config(load_recipe(arch))
    torch.manual_seed(seed)  # the random baseline is reproducible from its seed
    model = build_backbone(config)
    return ResolvedBackbone(model.eval(), name, "random", arch, {"arch": arch, "seed": seed})


def _timm(spec: str, seed: int) -> ResolvedBackbone:
    import timm

    import arlkit.models.timm_models  # noqa: F401  (registers avit_* with timm)

    rest = spec[len("timm:"):]
    name, _, weights = rest.partition(":")
    if not timm.is_model(name):
        hint = closest(name, timm.list_models())
        raise ConfigError(
            f"--backbone {spec}: unknown timm model {name!r}"
            + (f"; did you mean {hint!r}?" if hint else "")
            + " (list them with: python -c 'import timm; print(timm.list_models(\"vit_*\"))')"
        )
    if weights and not _exists(weights):
        raise ConfigError(f"--backbone {spec}: weights file {weights!r} does not exist")
    torch.manual_seed(seed)
    is_avit = name.startswith("avit_")
    kwargs: dict[str, Any] = {"in_chans": 1, "num_classes": 0}
    if not is_avit:  # any input size a multiple of the patch (position embeddings resampled)
        kwargs["dynamic_img_size"] = True
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:  # models without patch tokens reject dynamic_img_size
        raise ConfigError(
            f"--backbone {spec}: {name!r} is not a ViT-like timm model ({exc}); choose a vit_* model"
        ) from None
    if weights:
        load_timm_weights(model, weights, spec)
    if is_avit:  # already follows the contract, organ included
        return ResolvedBackbone(model.eval(), name, "timm", spec, {"weights": weights or None})
    return ResolvedBackbone(TimmBackbone(model).eval(), name, "timm", spec,
                            {"weights": weights or None})


def resolve_backbone(spec: str, arch: str | None = None, seed: int = 0) -> ResolvedBackbone:
    """Turn a ``--backbone`` value into a model (see the module docstring for the forms).

    Args:
        spec: export path, run directory, ``random``, ``random:N`` or ``timm:NAME[:WEIGHTS]``.
        arch: architecture of ``random`` (a recipe or an export); default
            :data:`DEFAULT_ARCH`.
        seed: initialisation seed of ``random`` (``random:N`` uses ``N``) and of timm
            models without weights.

    Returns:
        The :class:`ResolvedBackbone`, model in eval mode on CPU.

    Raises:
        ConfigError: the path does not exist, the timm name is unknown, ``--arch`` is
            missing, or the file is a recipe or not an export (the message says what to pass).
        ArlkitError: a run without checkpoints.
    """
    if spec == "random" or spec.startswith("random:"):
        return _random(arch, seed, spec)
    if spec.startswith("timm:"):
        return _timm(spec, seed)
    if not _exists(spec):
        raise ConfigError(
            f"--backbone {spec}: no such file or directory; pass an exported backbone "
            "(.safetensors), a run directory, 'random[:SEED]' or 'timm:NAME[:WEIGHTS]'"
        )
    if _is_dir(spec):
        return _from_run(spec)
    if spec.lower().endswith((".yaml", ".yml")):
        raise ConfigError(
            f"--backbone {spec}: a recipe holds an architecture, not weights; for its random "
            f"initialisation use --backbone random --arch {spec}; for a model trained with it, "
            "pass the run directory or its exported .safetensors file"
        )
    from arlkit.engine.export import load_backbone, read_export

    try:
        _, _, metadata = read_export(spec)
    except ArlkitError as exc:
        raise ConfigError(
            f"--backbone {exc}; pass an exported backbone ('arlkit export RUN_DIR --out "
            "FILE.safetensors'), a run directory, 'random' (with --arch RECIPE.yaml for a "
            "recipe's architecture) or 'timm:NAME[:WEIGHTS]'"
        ) from None
    model = load_backbone(spec)
    info = {k: metadata[k] for k in ("source", "step") if k in metadata}
    return ResolvedBackbone(model.eval(), _stem(spec), "export", spec, info)


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-1 of the class name and every parameter and buffer of the state dict (keys
    features caches; see :func:`unsaved_buffers` for the buffers it leaves out)."""
    return _digest(type(model).__name__, model.state_dict().items())


def unsaved_buffers(model: nn.Module) -> str | None:
    """Digest of the buffers a state dict leaves out, or None when there are none.

    Part of the feature-cache key beside :func:`backbone_fingerprint`: a timm backbone
    normalises its input with the mean and std of the model name's ``pretrained_cfg``
    (non-persistent buffers), so one weights file read as ``timm:vit_small_patch16_224`` or
    ``timm:vit_small_patch16_224.dino`` gives other features.
    """
    saved = set(model.state_dict())
    extra = [(n, b) for n, b in model.named_buffers() if n not in saved]
    return _digest("", extra)[:20] if extra else None


def _digest(prefix: str, tensors: Any) -> str:
    """SHA-1 of ``prefix`` and ``(name, tensor)`` pairs in name order (names, shapes, values)."""
    digest = hashlib.sha1(prefix.encode())
    for key, value in sorted(tensors, key=lambda item: item[0]):
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
