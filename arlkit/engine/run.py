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

from arlkit.errors import ArlkitError

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


def prepare_run_dir(run_dir: str, recipe_text: str, env: dict[str, Any]) -> None:
    fs, root = fsspec.core.url_to_fs(run_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root.rstrip('/')}/recipe.resolved.yaml", recipe_text.encode())
    fs.pipe_file(f"{root.rstrip('/')}/environment.json", json.dumps(env, indent=2).encode())


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
    from arlkit.engine.build import build_components
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
    if dry_run:
        console().print(f"would train {plan_text}", markup=False)
        return 0

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
            f"'arlkit run {source} --resume', or start anew with run_dir=<another directory>"
        )

    with share_cores(device, recipe.data.num_workers):
        dist_info = setup(device)
        try:
            from arlkit.data.sampler import OrganBalancedSampler

            env = _environment(recipe, device, dist_info.world_size)
            if dist_info.is_main:
                prepare_run_dir(run_dir, dump_recipe(recipe), env)
            sampler = OrganBalancedSampler(
                comps.dataset.organ_indices,
                temperature=recipe.data.sampler_temperature,
                seed=recipe.seed,
            )

            def order(epoch: int) -> list[int]:
                return sampler.global_order(epoch).tolist()

            views_dataset = ViewsDataset(comps.dataset, comps.views, recipe.seed)
            logger = RunLogger(run_dir, recipe.train.steps, enabled=dist_info.is_main, stream=stream,
                               tensorboard=recipe.train.tensorboard)
            trainer = Trainer(comps, run_dir, device, dist_info, logger, order, views_dataset)
            if resume_path:
                trainer.load(resume_path)
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
                    out.print(f"interrupted; continue with: arlkit run {source} --resume",
                              markup=False)
            return 130 if result.interrupted else 0
        finally:
            cleanup(dist_info)


def _bad_file_log(dataset: Any, run_dir: str, enabled: bool) -> Any:
    from arlkit.data.collate import BadFileLog

    limit = float(getattr(dataset, "max_bad_fraction", 0.01))
    # a dataset smaller than the log's default denominator is judged against its own size:
    # else a small dataset of unreadable files never reaches the limit
    min_samples = max(1, min(1000, len(dataset)))
    return BadFileLog(limit, run_dir=run_dir if enabled else None, min_samples=min_samples)
