"""Training-step throughput of paper.yaml vs mae.yaml vs ablation-mim.yaml at the same size.

All three recipes are built in one process at the same backbone size and batch, fed the
same pre-made batches (data loading excluded), and timed interleaved after warm-up; the
table shows median ms/step, img/s and the ratio to the MAE step.

    python benchmarks/bench_train.py                       # CPU: tiny, 64 px, batch 16
    python benchmarks/bench_train.py --device cuda --size base --batch 256 --dtype bf16
"""

from __future__ import annotations

import argparse
import io
import pathlib
import statistics
import tempfile
import time

import torch

from arlkit.engine.build import build_components
from arlkit.engine.data import BatchPlan, StepBatchSampler, ViewsDataset, collate_views
from arlkit.engine.distributed import DistInfo
from arlkit.engine.logger import RunLogger
from arlkit.engine.trainer import Trainer
from arlkit.recipe import load_recipe

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("paper.yaml", "mae.yaml", "ablation-mim.yaml")


def overrides(args: argparse.Namespace, name: str) -> list[str]:
    out = [
        f"model.backbone.params.size={args.size}",
        f"model.backbone.params.img_size={args.image_size}",
        f"model.backbone.params.patch_size={args.patch}",
        f"data.batch_size={args.batch}",
        f"train.precision={'bf16' if args.dtype == 'bf16' else 'fp32'}",
        f"train.device={args.device}",
        "data.dataset.params.length=100000",
        f"data.dataset.params.size={args.image_size + args.image_size // 4}",
    ]
    if name == "paper.yaml":  # the adversarial term on from the first step
        out += ["objectives.speckle_gan.params.start_step=0",f"data.views.params.global_size={args.image_size}",
                f"data.views.params.local_size={args.image_size * 3 // 7 // args.patch * args.patch}"]
    else:
        out += [f"data.views.params.size={args.image_size}"]
    if args.size == "tiny" and args.device == "cpu":
        out += ["model.backbone.params.depth=6"]
    return out


def build(args: argparse.Namespace, name: str, tmp: str):
    recipe = load_recipe(str(ROOT / "recipes" / name), overrides(args, name) + [f"run_dir={tmp}/{name}"])
    comps = build_components(recipe)
    device = torch.device(args.device)
    views = ViewsDataset(comps.dataset, comps.views, recipe.seed)
    logger = RunLogger(f"{tmp}/{name}", recipe.train.steps, enabled=False)
    trainer = Trainer(comps, f"{tmp}/{name}", device, DistInfo(), logger,
                      lambda e: list(range(len(comps.dataset))), views)
    plan = BatchPlan(args.batch, 1, 0, 1, len(comps.dataset))
    sampler = StepBatchSampler(lambda e: list(range(len(comps.dataset))), plan, 0, 1)
    batch = collate_views([views[key] for key in next(iter(sampler))])
    return trainer, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and args.size != "tiny":
        args.patch = 16
    tmp = tempfile.mkdtemp(prefix="arlkit-bench-train-")
    runs = {name: build(args, name, tmp) for name in RECIPES}
    times: dict[str, list[float]] = {name: [] for name in RECIPES}

    def step(name: str) -> float:
        trainer, batch = runs[name]
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._train_step([batch])
        trainer.step += 1
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        for name in RECIPES:
            step(name)
    for _ in range(args.rounds):
        for name in RECIPES:  # interleaved
            times[name].append(step(name))
    base = statistics.median(times["mae.yaml"])
    out = io.StringIO()
    out.write(f"device={args.device} size={args.size} batch={args.batch} "
              f"image={args.image_size} patch={args.patch} dtype={args.dtype}\n")
    out.write(f"{'recipe':<22}{'ms/step':>10}{'img/s':>10}{'x MAE step':>12}\n")
    for name in RECIPES:
        med = statistics.median(times[name])
        out.write(f"{name:<22}{med * 1e3:>10.1f}{args.batch / med:>10.1f}{base / med:>12.2f}\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
