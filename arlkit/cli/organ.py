"""``arlkit organ train|predict|add|robustness``: organ recognition and taxonomy extension.

Examples::

    arlkit organ train --backbone backbone.safetensors --data synthetic --out organ_head.safetensors
    arlkit organ predict --backbone backbone.safetensors --head organ_head.safetensors \\
        --data manifest.csv --out predictions.csv
    arlkit organ add backbone.safetensors --name ovary_new --data few_ovaries.csv \\
        --out extended.safetensors --head organ_head.safetensors
    arlkit organ robustness --backbone soft.safetensors --head organ_head.safetensors \\
        --data synthetic:breast --fraction 0.3

``--data`` is ``synthetic`` (the multi-organ corpus; ``--n`` images) or a manifest/folder
with organ labels. Predictions are a CSV with the predicted organ and its confidence; rows
under ``--min-confidence`` are marked ``low_confidence`` rather than silently trusted, and
confident predictions that contradict a given organ label are marked ``label_mismatch``.
"""

from __future__ import annotations

import argparse
import csv
import json
from typing import Any

__all__ = ["heldout_accuracy", "heldout_split", "register"]


def _dataset(spec: str, taxonomy: Any, size: int, n: int, seed: int) -> Any:
    from arlkit.errors import ConfigError, DataError

    if spec == "synthetic" or spec == "synthetic:organs":
        from arlkit.data.synthetic import SyntheticUltrasound

        return SyntheticUltrasound(size=size, length=n, seed=seed, taxonomy=taxonomy)
    from arlkit.eval.backbones import _exists

    if not _exists(spec):
        raise ConfigError(f"--data {spec}: no such manifest or folder (or write 'synthetic')")
    from arlkit.data.dataset import ManifestDataset

    ds = ManifestDataset(spec, taxonomy, size=size)
    if len(ds) == 0:
        raise DataError(f"--data {spec}: the manifest lists no images; add rows with an organ")
    return ds


def _backbone(
    args: argparse.Namespace, meta: dict[str, str] | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """The model and, for exports, its rebuildable configuration (its metadata into ``meta``)."""
    from arlkit.eval.backbones import resolve_backbone

    resolved = resolve_backbone(args.backbone, getattr(args, "arch", None), args.seed)
    config = None
    if resolved.kind == "export":
        from arlkit.engine.export import read_export

        _, config, raw_meta = read_export(resolved.source)
        if meta is not None:
            meta.update(raw_meta)
    return resolved.model, config


def _size(args: argparse.Namespace, model: Any) -> int:
    return int(args.image_size or getattr(model, "img_size", 224))


def _warn_bad(bad: list[tuple[str, str]]) -> None:
    """Name the unreadable images that were left out, on stderr."""
    if bad:
        from arlkit.cli.output import err_console

        shown = "; ".join(f"{path}: {reason}" for path, reason in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        err_console().print(f"warning: left out {len(bad)} unreadable image(s): {shown}{more}")


def heldout_split(organs: Any, groups: list[str], fraction: float, seed: int) -> tuple[Any, Any]:
    """``(train, held-out)`` row indices: about ``fraction`` of the patients of each organ are
    held out, so the frames of one patient never straddle the split (as the evaluation
    splits, :func:`arlkit.eval.splits.grouped_split`; rows without a patient id stand alone).

    Raises:
        ConfigError: ``fraction`` outside ``[0, 1)``.
    """
    import torch

    from arlkit.errors import ConfigError
    from arlkit.eval.splits import grouped_split

    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return torch.arange(len(organs)), torch.zeros(0, dtype=torch.long)
    tr, _, val = grouped_split([int(o) for o in organs], groups, 0.0, fraction, seed)
    return torch.as_tensor(tr), torch.as_tensor(val)


def heldout_accuracy(pred: Any, organs: Any, unknown_index: int) -> tuple[float, int]:
    """Accuracy of predicted organs ``(N,)`` on the rows with an organ label, and their count.

    ``unknown`` rows have no answer to get right (the head never predicts ``unknown``), so
    they are left out rather than counted as errors.
    """
    known = organs != unknown_index
    n = int(known.sum())
    return (float((pred[known] == organs[known]).float().mean()) if n else float("nan")), n


def _train(args: argparse.Namespace) -> int:
    import torch

    from arlkit.cli.output import console
    from arlkit.organ.classifier import save_head, stack_samples, train_organ_classifier

    model, _ = _backbone(args)
    ds = _dataset(args.data, model.taxonomy, _size(args, model), args.n, args.seed)
    bad: list[tuple[str, str]] = []
    groups: list[str] = []
    images, organs = stack_samples(ds, where=f"--data {args.data}", bad_files=bad, groups=groups)
    _warn_bad(bad)
    tr, val = heldout_split(organs, groups, args.val_fraction, args.seed)
    n_val = len(val)
    head = train_organ_classifier(model, images[tr], organs[tr], model.taxonomy, steps=args.steps,
                                  seed=args.seed)
    msg = f"organ head trained on {len(tr)} images"
    if n_val:
        from arlkit.organ.classifier import organ_features

        with torch.no_grad():
            pred = head(organ_features(model, images[val])).argmax(-1)
        acc, n_known = heldout_accuracy(pred, organs[val], model.taxonomy.unknown_index)
        n_cls = len(set(organs[tr].tolist()) - {model.taxonomy.unknown_index})
        msg += (f"; held-out accuracy {acc:.3f} on {n_known} labelled images "
                f"(chance {1 / max(n_cls, 1):.3f})")
    save_head(head, args.out, {"backbone": args.backbone})
    console().print(f"{msg}; wrote {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch

    from arlkit.cli.output import console
    from arlkit.organ.auto import AutoOrganBackbone
    from arlkit.organ.classifier import load_head, readable

    model, _ = _backbone(args)
    auto = AutoOrganBackbone(model, load_head(args.head, model.taxonomy))
    ds = _dataset(args.data, model.taxonomy, _size(args, model), args.n, args.seed)
    if len(ds) == 0:
        from arlkit.errors import DataError

        raise DataError(f"--data {args.data}: no images")
    names = model.taxonomy.names
    low = mismatch = written = 0
    bad: list[tuple[str, str]] = []
    with open(args.out, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "organ", "confidence", "second", "second_confidence", "given", "status"])
        for start in range(0, len(ds), 64):
            samples = readable([ds[i] for i in range(start, min(start + 64, len(ds)))], bad)
            if not samples:
                continue
            written += len(samples)
            x = torch.stack([s["image"] for s in samples])  # (b, 1, H, W)
            with torch.no_grad():
                probs = auto.organ_probabilities(x)  # (b, K)
            top = probs.topk(min(2, probs.shape[1]), -1)
            for s, p, i in zip(samples, top.values.tolist(), top.indices.tolist()):
                given = int(s["organ"])
                status = "ok"
                if p[0] < args.min_confidence:
                    status, low = "low_confidence", low + 1
                elif given != model.taxonomy.unknown_index and given != i[0]:
                    status, mismatch = "label_mismatch", mismatch + 1  # a wrong label, or a wrong guess
                out.writerow([s["id"], names[i[0]], f"{p[0]:.4f}", names[i[-1]], f"{p[-1]:.4f}",
                              names[given], status])
    _warn_bad(bad)
    if not written:
        from arlkit.errors import DataError

        raise DataError(f"--data {args.data}: none of its {len(bad)} images could be read "
                        f"(first: {bad[0][0]}: {bad[0][1]})")
    console().print(f"wrote {written} predictions to {args.out} "
                    f"({low} below confidence {args.min_confidence}, {mismatch} confident and "
                    "disagreeing with the given organ)")
    return 0


def _add(args: argparse.Namespace) -> int:
    from arlkit.cli.output import console
    from arlkit.engine.export import export_backbone
    from arlkit.errors import ConfigError, DataError
    from arlkit.organ.classifier import load_head, save_head, stack_samples
    from arlkit.organ.extend import add_organ

    args.backbone = args.source
    source_meta: dict[str, str] = {}
    model, config = _backbone(args, source_meta)
    if config is None:
        from arlkit.eval.backbones import resolve_backbone  # a run directory

        if resolve_backbone(args.source).kind != "run":
            raise ConfigError(f"organ add: {args.source} is neither an export nor a run directory")
        import fsspec
        import yaml

        from arlkit.engine.export import backbone_config
        from arlkit.recipe import validate_recipe

        rfile = f"{args.source.rstrip('/')}/recipe.resolved.yaml"
        with fsspec.open(rfile, "r") as handle:
            config = backbone_config(validate_recipe(yaml.safe_load(handle.read()), rfile))
    if args.name in model.taxonomy.organs:
        raise ConfigError(f"organ add: {args.name!r} is already in the taxonomy")
    tax = model.taxonomy.extended([args.name])  # the manifest may name the new organ
    ds = _dataset(args.data, tax, _size(args, model), 1, args.seed)
    bad: list[tuple[str, str]] = []
    images, organs = stack_samples(ds, where=f"--data {args.data}", bad_files=bad)
    _warn_bad(bad)
    pos = organs == tax.index(args.name)
    if not bool(pos.any()):
        raise DataError(f"--data {args.data}: no row has organ {args.name!r}; label a few images")
    known = (~pos) & (organs < tax.num_classes)
    head = load_head(args.head, model.taxonomy) if args.head else None
    added = add_organ(model, args.name, images[pos], head=head,
                      negatives=(images[known], organs[known]), steps=args.steps, seed=args.seed)
    config = {**config, "taxonomy": list(added.taxonomy.organs)}
    export_backbone(model, config, args.out, extra={
        # every organ added since the original export, not only this one
        "extended_from": args.source,
        "added_organs": json.dumps([*json.loads(source_meta.get("added_organs", "[]")), args.name]),
        "init_from": added.init_from})
    if head is not None:
        save_head(head, args.head_out or args.out.replace(".safetensors", "") + ".organ_head.safetensors")
    console().print(
        f"added organ {args.name!r} (index {added.index}, initialised from {added.init_from!r}) "
        f"on {int(pos.sum())} images; loss {added.loss_first:.4f} -> {added.loss_last:.4f}; "
        f"wrote {args.out}")
    return 0


def _robustness(args: argparse.Namespace) -> int:
    import torch

    from arlkit.cli.output import console
    from arlkit.errors import ConfigError
    from arlkit.eval.data import load_eval_data
    from arlkit.organ.auto import AutoOrganBackbone
    from arlkit.organ.classifier import load_head, readable
    from arlkit.organ.robustness import robustness_row

    heads = args.head or []
    if heads and len(heads) != len(args.backbone):
        raise ConfigError("organ robustness: give one --head per --backbone ('-' for none)")
    rows = []
    for i, spec in enumerate(args.backbone):
        ns = argparse.Namespace(backbone=spec, arch=args.arch, seed=args.seed)
        model, _ = _backbone(ns)
        data = load_eval_data(args.data, _size(args, model), model.taxonomy, n_train=args.n_train,
                              n_val=1, n_test=args.n_test, data_seed=args.seed, seed=args.seed)
        sets, bad = [], []
        for name, split in (("train", data.train), ("test", data.test)):
            samples = readable([split[j] for j in range(len(split))], bad)
            if not samples:
                from arlkit.errors import DataError

                raise DataError(f"--data {args.data}: the {name} split holds no readable image")
            sets.append((torch.stack([s["image"] for s in samples]),
                         torch.tensor([int(s["organ"]) for s in samples]),
                         torch.tensor([int(s["label"]) for s in samples])))
        _warn_bad(bad)
        cond = type(model.blocks[0].conditioner).__name__ if hasattr(model, "blocks") else "?"
        rows.append((spec, robustness_row(cond, model, sets[0], sets[1], args.fraction, args.seed)))
        if heads and heads[i] != "-":
            auto = AutoOrganBackbone(model, load_head(heads[i], model.taxonomy))
            rows.append((spec, robustness_row("auto", auto, sets[0], sets[1], args.fraction,
                                              args.seed)))
    console().print(f"organ labels corrupted: {args.fraction:.0%} of test images ({args.data})")
    console().print(f"{'backbone':30s} {'mode':26s} {'clean':>7s} {'corrupt':>7s} {'drop':>7s}")
    for spec, r in rows:
        console().print(f"{spec[-30:]:30s} {r.mode:26s} {r.clean:7.3f} {r.corrupted:7.3f} {r.drop:7.3f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump([{"backbone": s, "mode": r.mode, "clean": r.clean, "corrupted": r.corrupted,
                        "drop": r.drop} for s, r in rows], handle, indent=2)
    return 0


def _common(p: argparse.ArgumentParser, backbone: bool = True) -> None:
    if backbone:
        p.add_argument("--backbone", required=True,
                       help="exported .safetensors, run directory, 'random', 'random:N' or "
                            "'timm:NAME[:WEIGHTS]'")
    p.add_argument("--arch", default=None,
                   help="architecture of a random backbone (recipe or export)")
    p.add_argument("--image-size", type=int, default=None, help="square side (default: nominal)")
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``organ`` command group."""
    og = sub.add_parser("organ", help="organ recognition, organ='auto', new organs, robustness")
    og.set_defaults(handler=lambda args: (og.print_help(), 2)[1])
    ogs = og.add_subparsers(dest="organ_command", metavar="SUBCOMMAND")
    p = ogs.add_parser("train", help="train an organ head on a frozen backbone")
    _common(p)
    p.add_argument("--data", required=True, help="'synthetic' or a manifest/folder with organs")
    p.add_argument("--n", type=int, default=400, help="synthetic images")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of patients (per organ) held out to report accuracy")
    p.add_argument("--out", default="organ_head.safetensors")
    p.set_defaults(handler=_train)
    p = ogs.add_parser("predict", help="per-image organ predictions with confidence (CSV)")
    _common(p)
    p.add_argument("--head", required=True,
                   help="organ head from 'arlkit organ train', or a run trained with organ_classifier")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=100, help="synthetic images")
    p.add_argument("--min-confidence", type=float, default=0.5)
    p.add_argument("--out", default="organ_predictions.csv")
    p.set_defaults(handler=_predict)
    p = ogs.add_parser("add", help="add an organ class; old outputs stay identical")
    p.add_argument("source", help="exported backbone or run directory")
    _common(p, backbone=False)
    p.add_argument("--name", required=True, help="the new organ's name")
    p.add_argument("--data", required=True, help="manifest with a few images of the new organ")
    p.add_argument("--head", default=None, help="organ head to extend too")
    p.add_argument("--head-out", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", required=True, help="extended export (.safetensors)")
    p.set_defaults(handler=_add)
    p = ogs.add_parser("robustness", help="metric drop when organ labels are wrong")
    p.add_argument("--backbone", action="append", required=True, help="repeatable")
    p.add_argument("--head", action="append", default=None, help="organ head per backbone ('-': none)")
    p.add_argument("--arch", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--data", required=True, help="synthetic:TASK or a labelled manifest")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON of the table")
    p.set_defaults(handler=_robustness)
