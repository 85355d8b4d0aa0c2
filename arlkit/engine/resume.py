"""Resuming a run only where it continues that run: the recipe is compared with the run's
recipe.resolved.yaml (:func:`check_resume_recipe`) and the checkpoint with the model, before
anything is written into the run directory; the command that resumes a run exactly
(:func:`resume_command`).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

import fsspec
import torch

from arlkit.errors import ConfigError

__all__ = [
    "RECIPE_FILE",
    "RESUME_FREE_KEYS",
    "check_resume_recipe",
    "model_tensors",
    "recipe_differences",
    "resume_command",
]

RECIPE_FILE = "recipe.resolved.yaml"

#: Recipe keys that may differ between a run directory's recipe.resolved.yaml and the recipe
#: of ``--resume``: none of them changes what a training step computes, so the resumed run is
#: still the run its checkpoints come from. Every other key must be the same — the model,
#: objectives, data, seed, optimiser, teacher, ``train.precision`` and ``train.steps`` too:
#: the learning-rate, weight-decay and EMA schedules are cosines over ``train.steps``, so a
#: new length changes every later step (MAE/DINO allow it; arlkit promises exact resume, and a
#: forgotten ``train.steps=...`` override is the commonest way to get it wrong). Training
#: longer or otherwise is a new run directory started from a checkpoint (``run_dir=NEW
#: --resume CKPT``), which records its own recipe.
RESUME_FREE_KEYS: tuple[str, ...] = (
    # where the outputs go: the directory resumed is this one, however its path is spelt
    # (`runs/{name}` in the file, `run_dir=runs/x` on the command line, a moved directory)
    "run_dir",
    # a label: messages, checkpoint metadata and the `{name}` of run_dir (compared resolved
    # above); a copy of the recipe under another file name gets another default name
    "name",
    # how the run is watched and what is kept: no step reads them
    "train.log_every",
    "train.tensorboard",
    "train.ckpt_every",
    "train.keep_last",
    "train.export",
    "train.max_nonfinite",
    # where and how the same computation runs, like the number of processes (which is not
    # in the recipe at all): results agree to floating-point rounding, so a run started on
    # a GPU may continue on the CPU. train.precision is not here: bf16 changes the arithmetic
    "train.device",
    "train.compile",  # torch.compile of the backbone: state_dict keys are unchanged
    # views are seeded by (seed, epoch, index) and the loader has its own generator, so the
    # batches are the same with any number of loader processes
    "data.num_workers",
)


def resume_command(run_dir: str) -> str:
    """The shell command that resumes exactly this run: the run's own recipe, its directory.

    Not the command line's recipe and overrides: the recipe file may have been edited since,
    and recipe.resolved.yaml holds every override already.
    """
    recipe_file = f"{run_dir.rstrip('/')}/{RECIPE_FILE}"
    return (f"arlkit run {shlex.quote(recipe_file)} {shlex.quote(f'run_dir={run_dir}')} "
            "--resume")


_ABSENT = object()


def _value_text(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def recipe_differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(yaml path, old, new)`` of every leaf that differs between two recipe mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            out += recipe_differences(old.get(key, _ABSENT), new.get(key, _ABSENT), sub)
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            out += recipe_differences(old[i] if i < len(old) else _ABSENT,
                                      new[i] if i < len(new) else _ABSENT, f"{path}[{i}]")
        return out
    same_type = type(old) is type(new) or {type(old), type(new)} == {int, float}  # 1 == 1.0
    return [] if same_type and old == new else [(path, old, new)]


def _is_free(path: str) -> bool:
    return any(path == key or path.startswith(f"{key}.") for key in RESUME_FREE_KEYS)


def _difference_lines(diffs: list[tuple[str, Any, Any]], limit: int = 10) -> list[str]:
    lines = [f"  {p}: {_value_text(a)} → {_value_text(b)}" for p, a, b in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"  ... and {len(diffs) - limit} more")
    return lines


def _stored_recipe(run_dir: str) -> tuple[str, dict[str, Any]] | None:
    """The run directory's recipe.resolved.yaml as it validates today (defaults of newer
    components filled in like the new recipe's), or as written when it no longer validates
    (then the differences show why); None when the directory has none."""
    from arlkit.recipe.load import RecipeError, read_yaml, validate_recipe

    recipe_file = f"{run_dir.rstrip('/')}/{RECIPE_FILE}"
    fs, root = fsspec.core.url_to_fs(recipe_file)
    if not fs.exists(root):
        return None
    try:
        data = read_yaml(recipe_file)
    except RecipeError as exc:  # e.g. truncated by a crash while it was written
        raise ConfigError(
            f"--resume: cannot compare the recipe with the run's own: {exc}\nRestore "
            f"{recipe_file} (or remove it to resume without the comparison: the checkpoint's "
            "weights are still checked against the model)"
        ) from None
    try:
        return recipe_file, validate_recipe(data, recipe_file).model_dump(mode="json")
    except RecipeError:
        return recipe_file, data


def _checkpoint_run(path: str) -> str | None:
    """The run directory of ``RUN/checkpoints/step-XXXXXXXX``, else None."""
    parent, _, _ = path.rstrip("/").rpartition("/")
    run, _, name = parent.rpartition("/")
    return run if name == "checkpoints" and run else None


def _same_dir(a: str, b: str) -> bool:
    fa, ra = fsspec.core.url_to_fs(a)
    fb, rb = fsspec.core.url_to_fs(b)
    if fa.protocol != fb.protocol:
        return False
    if "file" in (fa.protocol if isinstance(fa.protocol, tuple) else (fa.protocol,)):
        return os.path.realpath(ra) == os.path.realpath(rb)
    return ra.rstrip("/") == rb.rstrip("/")


def _new_run_command(source: str, overrides: Sequence[str], checkpoint: str | None) -> str:
    """The command line as given, into ``run_dir=NEW_DIR`` (from ``checkpoint`` if given)."""
    kept = [o for o in overrides if not o.strip().startswith("run_dir=")]
    text = " ".join(shlex.quote(w) for w in ["arlkit", "run", source, *kept]) + " run_dir=NEW_DIR"
    return text + (f" --resume {shlex.quote(checkpoint)}" if checkpoint else "")


def check_resume_recipe(
    run_dir: str,
    recipe: Any,
    checkpoint: str,
    source: str,
    overrides: Sequence[str] = (),
    fits: bool = True,
) -> list[str]:
    """Refuse a ``--resume`` whose recipe would not continue the run its checkpoints are from.

    The recipe is compared with the recipe.resolved.yaml of ``run_dir`` when that directory
    holds checkpoints (the record that must keep matching them), before anything is written;
    only :data:`RESUME_FREE_KEYS` may differ. A checkpoint of *another* run directory
    continued in a new one is a new run that records its own recipe: its differences from
    the checkpoint's run are returned as notes, not refused.

    Args:
        fits: whether the checkpoint's weights fit the recipe's model (else a new run
            directory can only start from scratch).

    Returns:
        notes for the log.

    Raises:
        ConfigError: the differing YAML paths with their old → new values, and what to do.
    """
    from arlkit.engine import checkpoint as ckpt

    new = recipe.model_dump(mode="json")
    notes: list[str] = []
    if ckpt.list_checkpoints(run_dir):
        stored = _stored_recipe(run_dir)
        if stored is None:
            notes.append(f"note: {run_dir} has no {RECIPE_FILE} to compare the recipe with; "
                         "resuming with the recipe as given")
        else:
            recipe_file, old = stored
            diffs = [d for d in recipe_differences(old, new) if not _is_free(d[0])]
            if diffs:
                n = len(diffs)
                raise ConfigError("\n".join([
                    f"--resume: the recipe differs from {recipe_file}, the recipe this run's "
                    f"checkpoints were trained with, in {n} setting{'s' if n != 1 else ''} "
                    "(old → new):",
                    *_difference_lines(diffs),
                    "Resuming would not continue that run (train.steps too: the learning-rate, "
                    "weight-decay and EMA schedules follow it), so nothing was written. Resume "
                    "with the run's own recipe:",
                    f"  {resume_command(run_dir)}",
                    ("or, to train with the new values, continue its checkpoint in a new run "
                     "directory:" if fits else "or train the new recipe in a new run directory "
                     "(its model does not fit these checkpoints):"),
                    f"  {_new_run_command(source, overrides, checkpoint if fits else None)}",
                ]))
    origin = _checkpoint_run(checkpoint)
    if origin is not None and not _same_dir(origin, run_dir):
        try:
            stored = _stored_recipe(origin)
        except ConfigError:  # only a note depends on it; the weights are still checked
            stored = None
        if stored is not None:
            diffs = [d for d in recipe_differences(stored[1], new) if not _is_free(d[0])]
            if diffs:
                notes.append("\n".join([
                    f"note: continuing {checkpoint} with settings that differ from its run's "
                    f"{stored[0]} (old → new), so this is not a resume of that run; "
                    f"{run_dir} records the new recipe:",
                    *_difference_lines(diffs),
                ]))
    return notes


def model_tensors(comps: Any) -> dict[str, torch.Tensor]:
    """What :meth:`Trainer.state_tensors` will save and load, from the built components."""
    tensors = {f"student.{k}": v for k, v in comps.student.state_dict().items()}
    if comps.teacher is not None:
        tensors.update({f"teacher.{k}": v for k, v in comps.teacher.state_dict().items()})
    for obj in comps.objectives:
        tensors.update({f"aux.{obj.name}.{k}": v for k, v in obj.state_dict().items()})
    return tensors
