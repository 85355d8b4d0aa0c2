"""Linear-probe every checkpoint of one or more runs against several random initialisations.

The question this answers is issue 7's: did pretraining learn something a linear probe can
use, beyond what a randomly initialised backbone of the same architecture already gives?
A single random initialisation is a noisy baseline (on the synthetic lung task, two init
seeds differ by 0.10), so the baseline here is the mean and spread over ``--random-inits``
initialisations, probed on exactly the same splits.

For every run directory, every complete checkpoint (or only the latest, ``--last``) is
probed with the teacher backbone and, with ``--student``, the student backbone too. The
protocol is ``arlkit eval linear``'s (standardised features, SGD sweep over learning rates
picked on validation balanced accuracy, at least 2000 steps; ``--solver lbfgs``: converged
logistic regression over an L2 sweep) on the built-in synthetic
tasks, 400/100/400 train/val/test images per data seed. Each cell also reports ``pc1``,
the share of the test features' variance on their first principal component (how close
the features are to one-dimensional).

Example::

    arlkit run recipes/quickstart.yaml run_dir=runs/qs train.keep_last=20
    python benchmarks/probe_checkpoints.py runs/qs --tasks breast,lung,cardiac_view --last

Prints one line per backbone and a summary: pretrained minus the random mean, per task.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
from collections.abc import Sequence

import torch
import yaml

from arlkit.data.synthetic.dataset import SyntheticTask
from arlkit.engine import checkpoint as ckpt
from arlkit.engine.export import backbone_config, build_backbone
from arlkit.errors import ArlkitError
from arlkit.eval.backbones import checkpoint_backbone, has_teacher
from arlkit.eval.features import extract_features
from arlkit.eval.linear import DEFAULT_LRS, linear_probe
from arlkit.eval.protocols import _linear_epochs
from arlkit.recipe import load_recipe, validate_recipe

SPLITS = (("train", 400), ("val", 100), ("test", 400))
BATCH = 256


def load_tasks(tasks: Sequence[str], seeds: Sequence[int], size: int) -> dict[tuple[str, int], dict]:
    """Every (task, data seed) rendered once: ``{("breast", 0): {"train": [...], ...}}``."""
    return {(t, s): {split: list(SyntheticTask(t, n, split, size=size, seed=s))
                     for split, n in SPLITS}
            for t in tasks for s in seeds}  # fmt: skip


def probe(model: torch.nn.Module, data: dict[tuple[str, int], dict], pool: str,
          solver: str = "sgd") -> dict[tuple[str, int], tuple[float, float]]:
    """Test accuracy and pc1 share of every (task, seed) for one frozen backbone."""
    out = {}
    for (task, seed), splits in data.items():
        f = {split: extract_features(model, items, pool=pool) for split, items in splits.items()}
        epochs = _linear_epochs(None, None, len(f["train"].labels))  # the CLI's default
        res = linear_probe(f["train"].features, f["train"].labels, f["val"].features,
                           f["val"].labels, f["test"].features, int(f["train"].labels.max()) + 1,
                           DEFAULT_LRS, epochs, 0.0, batch_size=BATCH, seed=seed,
                           solver=solver)
        acc = float((res.test_probs.argmax(1) == f["test"].labels.numpy()).mean())
        centred = f["test"].features - f["test"].features.mean(0)
        power = torch.linalg.svdvals(centred.double()) ** 2
        out[task, seed] = (acc, float(power[0] / power.sum()))
    return out


def _step_of(path: str) -> int:
    digits = "".join(c for c in os.path.basename(path.rstrip("/")) if c.isdigit())
    return int(digits or 0)


def check_run(run_dir: str) -> None:
    """Exit with a message unless ``run_dir`` is an arlkit run with a checkpoint."""
    if not os.path.exists(os.path.join(run_dir, "recipe.resolved.yaml")):
        sys.exit(f"probe_checkpoints: {run_dir} is not an arlkit run (no recipe.resolved.yaml)")
    if not glob.glob(os.path.join(run_dir, "checkpoints", "step-*")):
        sys.exit(f"probe_checkpoints: {run_dir} has no checkpoint under checkpoints/")


def run_backbones(run_dir: str, last: bool, student: bool):
    """Yield ``(label, backbone)`` for the checkpoints of a run: the teacher (and the
    student with ``student``); runs without a teacher yield their student."""
    recipe_file = os.path.join(run_dir, "recipe.resolved.yaml")
    with open(recipe_file) as handle:
        config = backbone_config(validate_recipe(yaml.safe_load(handle), recipe_file))
    name = os.path.basename(run_dir.rstrip("/"))
    paths = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step-*")), key=_step_of)
    for path in paths[-1:] if last else paths:
        tensors, state, _ = ckpt.read_checkpoint(path)
        kinds = ("teacher", "student") if student else ("teacher",)
        if not has_teacher(tensors):
            kinds = ("student",)  # a run without self-distillation keeps no teacher
        for which in kinds:
            yield f"{name}@{state.get('step')} {which}", checkpoint_backbone(tensors, which, config)


def _cells(result: dict[tuple[str, int], tuple[float, float]]) -> str:
    return "  ".join(f"{t}{s} {a:.3f} (pc1 {p:.2f})" for (t, s), (a, p) in result.items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (with checkpoints)")
    parser.add_argument("--tasks", default="breast,thyroid,lung,cardiac_view")
    parser.add_argument("--seeds", default="0,1", help="data seeds (splits) of every task")
    parser.add_argument("--random-inits", type=int, default=4,
                        help="random initialisations of the baseline (seeds 0..N-1)")
    parser.add_argument("--arch", default="recipes/quickstart.yaml",
                        help="architecture of the random baseline")
    parser.add_argument("--size", type=int, default=48, help="image side of the probe")
    parser.add_argument("--pool", default="cls+avg", choices=("cls", "avg", "cls+avg"))
    parser.add_argument("--solver", default="sgd", choices=("sgd", "lbfgs"),
                        help="linear-probe solver (as `arlkit eval linear --solver`)")
    parser.add_argument("--last", action="store_true", help="only the latest checkpoint")
    parser.add_argument("--student", action="store_true", help="probe the student too")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        check_run(run_dir)
    try:
        data = load_tasks(args.tasks.split(","), [int(s) for s in args.seeds.split(",")],
                          args.size)
    except (ArlkitError, ValueError) as err:
        sys.exit(f"probe_checkpoints: --tasks/--seeds: {err}")
    try:
        config = backbone_config(load_recipe(args.arch))
    except ArlkitError as err:
        sys.exit(f"probe_checkpoints: --arch: {err}")
    random_acc: dict[tuple[str, int], list[float]] = {k: [] for k in data}
    for seed in range(args.random_inits):
        torch.manual_seed(seed)  # as `arlkit eval --backbone random --seed N`
        result = probe(build_backbone(config).eval(), data, args.pool, args.solver)
        print(f"random init {seed}: {_cells(result)}", flush=True)
        for k, (acc, _) in result.items():
            random_acc[k].append(acc)
    random_mean = {k: statistics.mean(v) for k, v in random_acc.items() if v}
    if random_mean:
        print("random mean ± sd: " + "  ".join(
            f"{t}{s} {random_mean[t, s]:.3f} ± {statistics.pstdev(v):.3f}"
            for (t, s), v in random_acc.items()), flush=True)
    for run_dir in args.runs:
        for label, model in run_backbones(run_dir, args.last, args.student):
            result = probe(model, data, args.pool, args.solver)
            line = f"{label}: {_cells(result)}"
            if random_mean:
                line += "\n    minus random mean: " + "  ".join(
                    f"{t}{s} {acc - random_mean[t, s]:+.3f}" for (t, s), (acc, _) in result.items())
            print(line, flush=True)


if __name__ == "__main__":
    main()
