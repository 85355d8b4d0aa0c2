"""``arlkit run``: validate, build, train, checkpoint, export — the main job."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import fsspec
import torch

from arlkit.engine.resume import RECIPE_FILE, check_resume_recipe, model_tensors, resume_command
from arlkit.errors import ArlkitError, ConfigError

__all__ = ["prepare_run_dir", "run_recipe"]


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ArlkitError("train.device=cuda but no CUDA device is available; use auto or cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _environment(recipe: Any, device: torch.device, world: int) -> dict[str, Any]:
    import arlkit
    from arlkit import plugins

    host = plugins.load()
    return {
        "arlkit": arlkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "world_size": world,
        # what the deform op 'auto' can choose from here (None: not installed)
        "kernels": {name: _version(name) for name in ("triton", "numba")},
        "argv": sys.argv,
        "plugins": [
            {"name": p.name, "distribution": p.dist, "version": p.version, "status": p.status}
            for p in host.plugins.values()
        ],
    }


def _deform_text(backbone: torch.nn.Module, device: torch.device, name: str) -> str:
    """``", deform op auto → numba"``: which implementation the blocks' operator runs here."""
    from arlkit.ops.auto import AutoDeform

    for block in getattr(backbone, "blocks", ()):
        op = getattr(block, "deform_op", None)
        if op is None:
            continue
        if isinstance(op, AutoDeform):
            depthwise = block.deform_weight.shape[1] == 1  # (C, 1, K)
            return f", deform op auto → {op.choice(device, depthwise)}"
        return f", deform op {name}"
    return ""


def prepare_run_dir(
    run_dir: str, recipe_text: str, env: dict[str, Any], resumed_from: str | None = None
) -> None:
    """Write recipe.resolved.yaml and environment.json into ``run_dir``.

    When resuming (``resumed_from``: the checkpoint), environment.json names the checkpoint
    and keeps the environments of the earlier sessions of the run under ``earlier``.
    """
    fs, root = fsspec.core.url_to_fs(run_dir)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    env_file = f"{root}/environment.json"
    if resumed_from is not None:
        env = {**env, "resumed_from": resumed_from}
        if fs.exists(env_file):
            text = fs.cat_file(env_file).decode("utf-8", "replace")
            try:
                old = json.loads(text)
            except ValueError:
                old = text  # kept as it was, not dropped
            earlier = old.pop("earlier", []) if isinstance(old, dict) else []
            env["earlier"] = [*earlier, old]
    fs.pipe_file(f"{root}/{RECIPE_FILE}", recipe_text.encode())
    fs.pipe_file(env_file, json.dumps(env, indent=2).encode())


def run_recipe(
    source: str,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    dry_run: bool = False,
    stream: Any = None,
) -> int:
    """Train from a recipe file; returns the process exit code.

    Every recipe, component and data error is raised before training starts.
    """
    from arlkit.cli.output import console
    from arlkit.engine import checkpoint as ckpt
    from arlkit.engine.build import _at, build_components
    from arlkit.engine.data import ViewsDataset, share_cores
    from arlkit.engine.distributed import cleanup, setup
    from arlkit.engine.export import export_backbone
    from arlkit.engine.logger import RunLogger
    from arlkit.engine.trainer import Trainer
    from arlkit.recipe import dump_recipe, load_recipe

    recipe = load_recipe(source, overrides)
    torch.manual_seed(recipe.seed)
    comps = build_components(recipe, source=source)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(recipe.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    run_dir = recipe.resolved_run_dir()
    n_params = sum(p.numel() for p in comps.student.backbone.parameters())
    deform = _deform_text(comps.student.backbone, device, recipe.model.deform_op.name)
    plan_text = (
        f"{recipe.name}: {recipe.model.backbone.name} {recipe.model.backbone.params} "
        f"({n_params / 1e6:.2f}M backbone parameters{deform}), objectives "
        f"{', '.join(f'{o.name}×{o.weight:g}' for o in recipe.objectives)}, balancer "
        f"{recipe.balancer.name}, data {recipe.data.dataset.name} ({len(comps.dataset)} "
        f"samples/epoch), {recipe.train.steps} steps of {recipe.data.batch_size} images on "
        f"{device} × {world}, run dir {run_dir}"
    )
    from arlkit.engine.data import BatchPlan

    with _at(source):  # the batch layout, before the run directory is touched
        BatchPlan(recipe.data.batch_size, world, 0, recipe.optim.accum_steps, len(comps.dataset))

    # --dry-run makes the checks below too: the run directory and --resume are read, not written
    resume_path = None
    if resume == "latest":
        resume_path = ckpt.find_latest(run_dir)
        if resume_path is None:
            raise ArlkitError(f"--resume: no complete checkpoint in {run_dir}/checkpoints")
    elif resume:
        resume_path = resume
        fs, root = fsspec.core.url_to_fs(resume_path)
        if not fs.exists(f"{root.rstrip('/')}/{ckpt.MARKER}"):  # before the run dir is touched
            raise ArlkitError(
                f"--resume {resume_path}: not a complete arlkit checkpoint (no {ckpt.MARKER} "
                "marker); pass a checkpoints/step-XXXXXXXX directory of a run, or --resume "
                "alone for the run directory's latest"
            )
    elif ckpt.find_latest(run_dir) is not None:
        raise ArlkitError(
            f"{run_dir} already holds checkpoints of an earlier run; continue it with "
            f"'{resume_command(run_dir)}', or start anew with run_dir=<another directory>"
        )
    notes = schedule_notes(recipe)
    if resume_path:  # all before the run directory is touched
        misfit = None
        try:
            ckpt.check_fits(resume_path, model_tensors(comps))
        except ConfigError as exc:
            misfit = exc
        # the recipe's differences first: they say why the weights do not fit
        notes += check_resume_recipe(run_dir, recipe, resume_path, source, overrides,
                                     fits=misfit is None)
        notes += rewind_notes(run_dir, resume_path)
        if misfit is not None:
            raise misfit
    if dry_run:
        for note in notes:
            console().print(note, markup=False)
        console().print(f"would train {plan_text}", markup=False)
        return 0

    with share_cores(device, recipe.data.num_workers):
        dist_info = setup(device)
        try:
            from arlkit.data.sampler import OrganBalancedSampler

            env = _environment(recipe, device, dist_info.world_size)
            sampler = OrganBalancedSampler(
                comps.dataset.organ_indices,
                temperature=recipe.data.sampler_temperature,
                seed=recipe.seed,
            )

            def order(epoch: int) -> list[int]:
                return sampler.global_order(epoch).tolist()

            views_dataset = ViewsDataset(comps.dataset, comps.views, recipe.seed)
            if dist_info.is_main:  # metrics.jsonl is opened (appended to) by the logger
                fs, root = fsspec.core.url_to_fs(run_dir)
                fs.makedirs(root, exist_ok=True)
            logger = RunLogger(run_dir, recipe.train.steps, enabled=dist_info.is_main, stream=stream,
                               tensorboard=recipe.train.tensorboard)
            trainer = Trainer(comps, run_dir, device, dist_info, logger, order, views_dataset)
            try:
                if resume_path:  # loaded before recipe and environment are written
                    try:
                        trainer.load(resume_path)
                    except (RuntimeError, ValueError, KeyError) as exc:
                        if isinstance(exc, ArlkitError):
                            raise
                        # what check_fits cannot see, e.g. an optimizer state of another shape
                        raise ConfigError(
                            f"--resume {resume_path}: the checkpoint does not fit the training "
                            f"state of this recipe ({type(exc).__name__}: {exc}); resume with "
                            "the recipe it was trained with, or start a new run directory"
                        ) from None
                if dist_info.is_main:
                    prepare_run_dir(run_dir, dump_recipe(recipe), env, resumed_from=resume_path)
            except BaseException:
                logger.close()
                raise
            for note in notes:
                logger.message(note)
            if resume_path:
                logger.resume_at(trainer.step)
                logger.message(f"resumed from {resume_path} at step {trainer.step}")
            logger.message(f"training {plan_text}")
            bad_log = _bad_file_log(comps.dataset, run_dir, dist_info.is_main)
            try:
                result = trainer.fit(bad_log)
            finally:
                logger.close()
            exported = None
            if dist_info.is_main and recipe.train.export and not result.interrupted:
                source_model = (trainer.teacher or trainer.student).backbone
                exported = export_backbone(
                    source_model, comps.config, f"{run_dir.rstrip('/')}/backbone.safetensors",
                    extra={"source": "teacher" if trainer.teacher is not None else "student",
                           "step": str(trainer.step)})
            if dist_info.is_main:
                out = console()
                out.print(f"done: {result.steps_done} steps; checkpoint {result.last_checkpoint}",
                          markup=False)
                if exported:
                    out.print(f"exported backbone: {exported}", markup=False)
                if bad_log.num_bad:
                    out.print(f"note: {bad_log.num_bad} image(s) could not be read and were left "
                              f"out; they are listed in {bad_log.path}", markup=False)
                if result.interrupted:
                    out.print(f"interrupted; continue with: {resume_command(run_dir)}",
                              markup=False)
            return 130 if result.interrupted else 0
        finally:
            cleanup(dist_info)


def rewind_notes(run_dir: str, resume_path: str) -> list[str]:
    """A resume into a ``run_dir`` that holds checkpoints of later steps than the one resumed
    (a rewind): they are the run before this resume, and the first checkpoint this run
    writes deletes them (:func:`arlkit.engine.checkpoint.write_checkpoint`), so it is said
    before training."""
    from arlkit.engine import checkpoint as ckpt

    try:
        step = ckpt.step_of(resume_path)
    except ValueError:
        return []
    later = ckpt.checkpoints_after(run_dir, step)
    if not later:
        return []
    names = ", ".join(p.rstrip("/").rsplit("/", 1)[-1] for p in later)
    return [
        f"note: resuming {run_dir} from step {step} while it holds later checkpoints ({names}): "
        "they are the run before this resume, and this run's first checkpoint deletes them; "
        "to keep them, continue in another run directory (run_dir=NEW --resume "
        f"{resume_path})"
    ]


def schedule_notes(recipe: Any) -> list[str]:
    """What a run should be told about its schedules before it starts.

    A warm-up that reaches the last step (``optim.warmup_steps >= train.steps - 1``, e.g. a
    shipped recipe shortened with ``train.steps=``; :func:`arlkit.engine.schedules.cosine`
    caps it at ``steps - 1``) leaves the learning rate at its peak at the end, with no
    decay. That is fine for a smoke run and a surprise otherwise, so it is said.
    """
    warmup, steps = recipe.optim.warmup_steps, recipe.train.steps
    if steps <= 2 or warmup < steps - 1:
        return []
    return [
        f"note: optim.warmup_steps={warmup} with train.steps={steps}: the learning rate warms "
        f"up until the last step (step {steps - 1}) and ends at its peak, with no cosine "
        f"decay; for a full schedule set optim.warmup_steps below {steps - 1} "
        f"(e.g. optim.warmup_steps={max(1, steps // 10)})"
    ]


def _bad_file_log(dataset: Any, run_dir: str, enabled: bool) -> Any:
    from arlkit.data.collate import BadFileLog

    limit = float(getattr(dataset, "max_bad_fraction", 0.01))
    # a dataset smaller than the log's default denominator is judged against its own size:
    # else a small dataset of unreadable files never reaches the limit
    min_samples = max(1, min(1000, len(dataset)))
    return BadFileLog(limit, run_dir=run_dir if enabled else None, min_samples=min_samples)
