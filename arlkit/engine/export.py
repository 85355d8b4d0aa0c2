"""Exported backbones: one safetensors file with the model configuration in its metadata.

``arlkit export RUN_DIR --out backbone.safetensors`` writes the teacher's backbone
(the student's with ``--student``); :func:`load_backbone` rebuilds the model from the
embedded configuration, and timm loads the same file through
``timm.create_model("avit_base_patch16_224", pretrained=True,
pretrained_cfg_overlay=dict(file=path))`` because the tensor names are the model's own.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from arlkit.engine.checkpoint import is_local, safetensors_header, write_synced
from arlkit.errors import ArlkitError, ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["export_from_run", "backbone_config", "build_backbone", "export_backbone", "load_backbone", "read_export"]

FORMAT = "arlkit-backbone/1"


def backbone_config(recipe: Any) -> dict[str, Any]:
    """The part of a recipe needed to rebuild its backbone (JSON-serialisable)."""
    model = recipe.model
    return {
        "backbone": {"name": model.backbone.name, "params": model.backbone.params},
        "conditioner": {"name": model.conditioner.name, "params": model.conditioner.params},
        "deform_op": {"name": model.deform_op.name, "params": model.deform_op.params},
        "offset_net": {"name": model.offset_net.name, "params": model.offset_net.params},
        "taxonomy": list(recipe.taxonomy.organs),
    }


def build_backbone(config: dict[str, Any], registries: Any = None) -> nn.Module:
    """Build a backbone from :func:`backbone_config` output through the registries."""
    if registries is None:
        from arlkit.registry import default_registries as registries
    return registries.backbones.build(
        config["backbone"]["name"],
        config["backbone"]["params"],
        taxonomy=Taxonomy(tuple(config["taxonomy"])),
        conditioner=(config["conditioner"]["name"], config["conditioner"]["params"]),
        deform_op=(config["deform_op"]["name"], config["deform_op"]["params"]),
        offset_net=(config["offset_net"]["name"], config["offset_net"]["params"]),
    )


def export_backbone(
    backbone: nn.Module, config: dict[str, Any], path: str, extra: dict[str, str] | None = None
) -> str:
    """Write ``backbone``'s weights and ``config`` to one safetensors file.

    A local file is written beside its destination and then renamed over it, so a run
    killed while exporting leaves the previous file (or none), never a truncated one.
    """
    import arlkit

    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in backbone.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "arlkit_version": arlkit.__version__,
        "config": json.dumps(config),
        **(extra or {}),
    }
    data = st_save(tensors, metadata=metadata)
    fs, root = fsspec.core.url_to_fs(path)
    if not is_local(fs):  # object stores write an object whole
        with fsspec.open(path, "wb") as handle:
            handle.write(data)
        return path
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)  # as fsspec.open("wb") does
    tmp = f"{root}.{os.getpid()}.tmp"
    try:
        write_synced(tmp, data)
        os.replace(tmp, root)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _check_out(out: str) -> None:
    """Refuse an ``--out`` that export would destroy: a folder, or a file that is not an
    earlier export (a checkpoint's ``model.safetensors``, a recipe, ...)."""
    fs, path = fsspec.core.url_to_fs(out)
    if not fs.exists(path):
        return
    if fs.isdir(path):
        raise ConfigError(f"--out {out}: is a folder; name the file to write, e.g. "
                          f"{out.rstrip('/')}/backbone.safetensors")
    try:  # the header only: an export of a large backbone is not read whole
        with fs.open(path, "rb") as handle:
            ours = safetensors_header(handle.read).get("__metadata__", {}).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ConfigError(f"--out {out}: the file exists and is not an arlkit backbone export, "
                          "so it is not written over; choose another --out or remove it")


def read_export(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Tensors, backbone configuration and raw metadata of an exported file."""
    import io

    try:
        with fsspec.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ArlkitError(f"{path}: no such exported backbone") from None
    try:
        metadata = safetensors_header(io.BytesIO(raw).read).get("__metadata__", {})
        tensors = st_load(raw)
    except Exception as exc:  # any parse failure of a foreign file
        raise ArlkitError(f"{path}: not a safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise ArlkitError(
            f"{path}: not an arlkit backbone export (metadata format {metadata.get('format')!r}); "
            "create one with 'arlkit export RUN_DIR --out FILE'"
        )
    return tensors, json.loads(metadata["config"]), metadata


def load_backbone(path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported backbone and load its weights (strictly), in eval mode."""
    tensors, config, _ = read_export(path)
    model = build_backbone(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # weights and recorded architecture disagree (an edited file)
        detail = " ".join(str(exc).split("\n\t")[1:3]).strip() or str(exc)
        raise ArlkitError(
            f"{path}: its weights do not fit the architecture its metadata records ({detail}); "
            "export the run again with `arlkit export`"
        ) from None
    return model.to(map_location).eval()


def export_from_run(
    run_dir: str, out: str, student: bool = False, checkpoint: str | None = None
) -> tuple[str, str, int]:
    """Export the teacher (or student) backbone of a run's checkpoint.

    Returns:
        (path written, "teacher" or "student", step of the checkpoint).
    """
    import yaml

    from arlkit.engine import checkpoint as ckpt
    from arlkit.recipe import validate_recipe

    fs, root = fsspec.core.url_to_fs(run_dir)
    if not fs.isdir(root):
        raise ArlkitError(f"{run_dir}: no such run directory; pass the run_dir of an `arlkit run`")
    _check_out(out)
    path = checkpoint or ckpt.find_latest(run_dir)
    if path is None:
        raise ArlkitError(f"{run_dir}: no complete checkpoint under {run_dir}/checkpoints (the "
                          "run stopped before its first checkpoint, or is still writing it); "
                          "train it further or pass another run directory")
    recipe_file = f"{run_dir.rstrip('/')}/recipe.resolved.yaml"
    try:
        with fsspec.open(recipe_file, "r") as handle:
            recipe = validate_recipe(yaml.safe_load(handle.read()), recipe_file)
    except FileNotFoundError:
        raise ArlkitError(f"{run_dir}: not an arlkit run directory (no recipe.resolved.yaml)") from None
    tensors, state, _ = ckpt.read_checkpoint(path)
    which = "student" if student else "teacher"
    prefix = f"{which}.backbone."
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not weights and which == "teacher":
        which, prefix = "student", "student.backbone."
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    config = backbone_config(recipe)
    model = build_backbone(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # e.g. --checkpoint of another run
        first = str(exc).strip().splitlines()
        raise ArlkitError(
            f"{path}: the checkpoint's {which} backbone does not fit the model of {recipe_file} "
            f"({first[1].strip() if len(first) > 1 else first[0]} ...); pass a checkpoint of "
            f"{run_dir}, or the run directory the checkpoint belongs to"
        ) from None
    step = int(state["step"])
    export_backbone(model, config, out, extra={"source": which, "step": str(step)})
    return out, which, step
