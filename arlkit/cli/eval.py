"""``arlkit eval linear|knn|finetune|segment|compare`` and ``arlkit viz pca``.

Every evaluation writes ``settings.json`` and ``results.json`` into ``--out`` (default
``runs/eval/<command>-<task>-<backbone>``) and prints a short summary. Examples::

    arlkit eval linear --backbone runs/quickstart --data synthetic:breast
    arlkit eval linear --backbone random --arch recipes/quickstart.yaml --data synthetic:breast
    arlkit eval knn --backbone backbone.safetensors --data manifest.csv --label-fraction 0.01,0.1,1
    arlkit eval segment --backbone runs/quickstart --data synthetic:cardiac_seg
    arlkit eval compare --backbone runs/quickstart --backbone random --data synthetic:breast \\
        --data synthetic:cardiac_seg --label-fraction 0.1,1.0
    arlkit viz pca --backbone runs/quickstart --backbone random --data synthetic:cardiac_view

Options are checked before any work; what an evaluation leaves out (unreadable images,
rows without a label) is named on stderr as ``warning: ...`` lines and recorded in
``results.json`` (``bad_files``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_viz_pca", "register"]

_PROTOCOL_HELP = {
    "linear": "linear probe on frozen features (learning rate picked on validation)",
    "knn": "weighted k-nearest-neighbour classification of frozen features",
    "finetune": "end-to-end fine-tuning (layer-wise lr decay, drop-path)",
    "segment": "UPerNet segmentation on four intermediate levels (Dice, mIoU)",
}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _common(p: argparse.ArgumentParser, compare: bool = False) -> None:
    if compare:
        p.add_argument("--backbone", action="append", required=True,
                       help="a backbone (repeat): export, run directory, random, random:SEED, "
                            "timm:NAME[:WEIGHTS]")
        p.add_argument("--data", action="append", required=True,
                       help="a task (repeat): synthetic:TASK or a labelled manifest/folder")
        p.add_argument("--protocol", default="linear", choices=("linear", "knn", "finetune"),
                       help="protocol of the classification tasks (segmentation tasks use segment)")
        p.add_argument("--metrics", default=None,
                       help="metrics in the table and plots (default accuracy,auroc,dice,miou)")
    else:
        p.add_argument("--backbone", required=True,
                       help="exported .safetensors, run directory, 'random' (init from --seed), "
                            "'random:N' (init from seed N), or timm:NAME[:WEIGHTS]")
        p.add_argument("--data", required=True,
                       help="synthetic:breast|thyroid|gallbladder|lung|cardiac_view|cardiac_seg, "
                            "or a labelled manifest/folder")
    p.add_argument("--arch", default=None,
                   help="architecture of --backbone random: recipe or export (default recipes/quickstart.yaml)")
    p.add_argument("--image-size", type=int, default=None,
                   help="square input side (default: the backbone's nominal size)")
    p.add_argument("--n-train", type=int, default=200, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=100, help="synthetic validation images")
    p.add_argument("--n-test", type=int, default=200, help="synthetic test images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--label-fraction", default="1.0",
                   help="stratified label fractions of the training split, e.g. 0.01,0.1,1.0")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (linear/knn 64, finetune 32, segment 16)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (linear 100 but at least 2000 steps of 256, "
                        "finetune 50, segment 20)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=_floats, default=None,
                   help="linear: the learning-rate sweep; finetune/segment: the learning rate")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty (linear sgd 0, finetune/segment 0.05); linear lbfgs: fixes "
                        "the penalty instead of sweeping 1e-6..1")
    p.add_argument("--pool", default="cls+avg", choices=("cls", "avg", "cls+avg"),
                   help="token pooling of the features")
    p.add_argument("--n-last-blocks", type=int, default=1,
                   help="linear/knn: features of the last N blocks concatenated (DINO's "
                        "evaluation uses 4 for small ViTs)")
    p.add_argument("--no-organ", action="store_true", help="do not pass the organ to the backbone")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws of the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--cache-dir", default=os.path.join("runs", "eval", ".cache"),
                   help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier evaluation in the output directory")


def _tuning(p: argparse.ArgumentParser, protocol: str) -> None:
    if protocol in ("linear", "compare"):
        p.add_argument("--solver", default="sgd", choices=("sgd", "lbfgs"),
                       help="linear probe: sgd (DINO/MAE: learning-rate sweep) or lbfgs (CLIP: "
                            "logistic regression solved to convergence, L2-penalty sweep)")
    if protocol in ("knn", "compare"):
        p.add_argument("--k", type=int, default=20, help="kNN neighbours")
        p.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    if protocol in ("finetune", "segment", "compare"):
        p.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise lr decay")
        p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    if protocol in ("segment", "compare"):
        p.add_argument("--freeze-backbone", action="store_true", help="train the decoder only")
        p.add_argument("--decoder-channels", type=int, default=None,
                       help="UPerNet width (default: half the backbone width, within 64..512)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command group."""
    ev = sub.add_parser("eval", help="downstream evaluation: linear, knn, finetune, segment, compare")
    ev.set_defaults(handler=lambda args: _group_help(ev))
    evs = ev.add_subparsers(dest="eval_command", metavar="PROTOCOL", parser_class=type(ev))
    for protocol, text in _PROTOCOL_HELP.items():
        p = evs.add_parser(protocol, help=text, description=text)
        _common(p)
        _tuning(p, protocol)
        p.set_defaults(handler=_run, protocol=protocol)
    cmp = evs.add_parser("compare", help="several backbones × tasks → tables and plots")
    _common(cmp, compare=True)
    _tuning(cmp, "compare")
    cmp.set_defaults(handler=_compare)


def _group_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _config(args: argparse.Namespace, protocol: str, backbone: str, data: str) -> Any:
    from arlkit.eval.data import parse_fractions
    from arlkit.eval.run import EvalConfig

    return EvalConfig(
        protocol=protocol, backbone=backbone, data=data, arch=args.arch, image_size=args.image_size,
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, data_seed=args.data_seed,
        label_fractions=parse_fractions(args.label_fraction), batch_size=args.batch_size,
        epochs=args.epochs, steps=args.steps, n_last_blocks=args.n_last_blocks,
        lrs=args.lr, weight_decay=args.weight_decay, solver=getattr(args, "solver", "sgd"),
        layer_decay=getattr(args, "layer_decay", 0.75), drop_path=getattr(args, "drop_path", 0.1),
        freeze_backbone=getattr(args, "freeze_backbone", False),
        decoder_channels=getattr(args, "decoder_channels", None), pool=args.pool,
        use_organ=not args.no_organ, k=getattr(args, "k", 20),
        temperature=getattr(args, "temperature", 0.07), n_boot=args.n_boot, seed=args.seed,
        device=args.device, workers=args.workers,
        cache_dir=None if args.no_cache else args.cache_dir, out=args.out,
        overwrite=args.overwrite,
    )


def _printer() -> Any:
    from arlkit.cli.output import console

    return lambda line: console().print(line, markup=False)


def _warn(line: str) -> None:
    """``warning: ...`` on stderr (what a command left out; the command goes on)."""
    from arlkit.cli.output import err_console

    con = err_console()
    if con.is_terminal:
        con.print("[bold yellow]warning:[/] ", end="", markup=True)
        con.print(line, markup=False)
    else:
        sys.stderr.write(f"warning: {line}\n")


def _run(args: argparse.Namespace) -> int:
    from arlkit.eval.run import run_eval, summary_lines

    say = _printer()
    results = run_eval(_config(args, args.protocol, args.backbone, args.data), log=say, warn=_warn)
    for line in summary_lines(results):
        say(line)
    say(f"wrote {results['out']}/settings.json and results.json")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from arlkit.eval.compare import compare

    say = _printer()
    base = _config(args, args.protocol, args.backbone[0], args.data[0])
    out = args.out or os.path.join("runs", "eval", "compare")
    # an empty --metrics is an error (compare says so), not the defaults
    metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",") if m.strip()]
    summary = compare(args.backbone, args.data, base, out, metrics, log=say, warn=_warn)
    with open(summary["files"]["markdown"]) as handle:
        say(handle.read())
    say("wrote " + ", ".join(summary["files"].values()))
    return 0


def add_viz_pca(viz_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``pca`` to the ``viz`` command group (called by :mod:`arlkit.cli.viz`)."""
    p = viz_subparsers.add_parser(
        "pca", help="PCA of patch features as colour over images, backbones side by side")
    p.add_argument("--backbone", action="append", required=True,
                   help="a backbone (repeat): export, run directory, random, random:SEED, "
                            "timm:NAME[:WEIGHTS]")
    p.add_argument("--data", default="synthetic:cardiac_view",
                   help="images to show: synthetic:TASK (its test split) or a manifest/folder "
                        "(its test rows when it names splits, else its rows in order)")
    p.add_argument("--n", type=int, default=4,
                   help="number of images (rows); a manifest may hold fewer")
    p.add_argument("--arch", default=None, help="architecture of --backbone random")
    p.add_argument("--image-size", type=int, default=None, help="default: the first backbone's size")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of the colours, in [0, 1]")
    p.add_argument("--no-organ", action="store_true", help="do not pass the organ to the backbones")
    p.add_argument("--foreground", default="fov", choices=("fov", "all"),
                   help="patches the PCA is fitted on: 'fov' those mostly inside the scan's "
                        "field of view (the others stay grey, uncoloured; an image without one "
                        "uses all its patches, with a note), 'all' every patch (default: fov)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--out", default="pca.png", help="PNG to write")
    p.set_defaults(handler=_viz_pca)
    return p


def _check_pca_args(args: argparse.Namespace) -> None:
    """The options of ``viz pca``, each offending one named, before any work."""
    from arlkit.errors import ConfigError
    from arlkit.eval.data import check_data_spec

    problems = []
    if args.n < 1:
        problems.append(f"--n must be at least 1, got {args.n}")
    if not 0.0 <= args.alpha <= 1.0:
        problems.append(f"--alpha must be in [0, 1] (0: the image only, 1: the colours only), got {args.alpha:g}")
    if args.image_size is not None and args.image_size < 1:
        problems.append(f"--image-size must be >= 1, got {args.image_size}")
    for flag, value in (("--seed", args.seed), ("--data-seed", args.data_seed)):
        if value < 0:
            problems.append(f"{flag} must be >= 0, got {value}")
    if problems:
        raise ConfigError("; ".join(problems))
    if os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out}: a directory; pass the PNG file to write, e.g. "
                          f"{os.path.join(args.out, 'pca.png')}")
    parent = os.path.dirname(os.path.abspath(args.out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {args.out}: {parent} is a file, so the PNG cannot be written there")
    check_data_spec(args.data)


def _viz_pca(args: argparse.Namespace) -> int:
    import torch

    from arlkit.data.condition import CONDITION_KEYS
    from arlkit.eval.backbones import resolve_backbone
    from arlkit.eval.badfiles import BadFiles, warning_line
    from arlkit.eval.data import picture_samples
    from arlkit.eval.features import collate_samples
    from arlkit.eval.pca import pca_figure

    _check_pca_args(args)
    resolved = [resolve_backbone(b, args.arch, args.seed) for b in args.backbone]
    first = resolved[0].model
    size = args.image_size or int(getattr(first, "img_size", 224))
    samples, titles, notes = picture_samples(args.data, size, first.taxonomy, args.n,
                                             data_seed=args.data_seed, seed=args.seed)
    for line in notes:
        _printer()(line)
    if args.n > len(samples):
        _warn(f"--n {args.n}: {args.data} holds {len(samples)} image(s) to draw; "
              f"drawing {len(samples)} rows")
    batch = collate_samples(samples)
    bad = BadFiles("test")
    bad.add(batch)
    if "image" not in batch:
        raise bad.error("viz pca")
    if len(bad):
        _warn(warning_line(bad.records(), "Those rows are not drawn; fix or remove the files"))
    fov = torch.stack([s["fov"] for s in samples if s.get("valid", True)]) \
        if all("fov" in s for s in samples if s.get("valid", True)) else None
    titles = [t for t, s in zip(titles, samples, strict=True) if s.get("valid", True)]
    organs = None if args.no_organ else batch["organ"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    side = {k: batch[k] for k in CONDITION_KEYS}
    path = pca_figure(batch["image"], [(bb.name, bb.model) for bb in resolved], args.out,
                      organs=organs, fov=fov, alpha=args.alpha, titles=titles, side=side,
                      foreground=args.foreground, log=_printer())
    _printer()(f"wrote {path}")
    return 0
