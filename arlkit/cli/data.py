"""``arlkit data ...`` commands: write and look at the synthetic corpus.

``data`` is a command group; each action is a nested sub-command registered by one
function in :data:`SUBCOMMANDS` (add yours there). Handlers take the parsed namespace
and return the exit code.

    arlkit data synth --out DIR --n N [--organs ...] [--size 224] [--seed 0]
    arlkit data synth --out DIR --n N --task breast --split test
    arlkit data show --organs all --out grid.png
"""

from __future__ import annotations

import argparse
import csv
import io
import posixpath
from collections.abc import Callable
from typing import Any

__all__ = ["SUBCOMMANDS", "data_show", "data_synth", "register"]

TASK_NAMES = ("breast", "thyroid", "gallbladder", "lung", "cardiac_view", "cardiac_seg")
MANIFEST_COLUMNS = ("path", "organ", "probe", "split", "label", "mask", "patient_id")


def _add_synth(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "synth",
        help="write synthetic B-mode images as PNG files plus a manifest.csv",
        description=(
            "Render N synthetic images into DIR/<organ>/ as 8-bit PNGs and write "
            "DIR/manifest.csv (columns: " + ", ".join(MANIFEST_COLUMNS) + "; paths relative "
            "to the manifest). Without --task: the multi-organ pretraining corpus (no labels). "
            "With --task: a labelled, class-balanced set; label is the class index and, for "
            "cardiac_seg, mask is a PNG of class indices (left ventricle = 1)."
        ),
    )
    p.add_argument("--out", required=True,
                   help="output folder (local path or fsspec URL) without a manifest.csv yet")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--organs", nargs="+", default=["all"], help="organ names, or 'all'")
    p.add_argument("--probes", nargs="+", choices=["linear", "convex", "phased"], default=None)
    p.add_argument("--task", choices=TASK_NAMES, default=None, help="write a labelled task set")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=data_synth)


def _add_show(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "show",
        help="contact sheet of synthetic samples (one row per organ, or per class of a task)",
    )
    p.add_argument("--organs", nargs="+", default=["all"], help="organ names, or 'all'")
    p.add_argument("--task", choices=TASK_NAMES, default=None, help="rows are the task's classes")
    p.add_argument("--n", type=int, default=6, help="images per row")
    p.add_argument("--size", type=int, default=160, help="tile side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grid.png", help="PNG to write (local path or fsspec URL; default %(default)s)")
    p.set_defaults(handler=data_show)


#: One function per ``arlkit data`` sub-command, in help order.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_synth, _add_show]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its sub-commands."""
    data = sub.add_parser("data", help="synthetic data: write it to files, look at it")
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    for add in SUBCOMMANDS:
        add(data_sub)


def _organs(names: list[str]) -> list[str] | None:
    """``None`` for all organs, else the list (validated by the dataset)."""
    return None if [n.lower() for n in names] == ["all"] else names


def _png(array: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _row_count(fs: Any, manifest: str) -> str:
    """``"12 rows"`` of a CSV manifest (header not counted), or why it cannot be counted."""
    try:
        with fs.open(manifest, "r", encoding="utf-8", newline="") as f:
            n = sum(1 for _ in csv.reader(f)) - 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"unreadable: {type(exc).__name__}"
    return f"{max(n, 0)} row{'s' if n != 1 else ''}"


def data_synth(args: argparse.Namespace) -> int:
    """Write ``--n`` images and ``manifest.csv`` into ``--out``; refuses, before writing
    anything, a folder that already holds a ``manifest.csv`` (it would be replaced)."""
    import fsspec
    import numpy as np

    from arlkit.cli.output import console
    from arlkit.data.synthetic import SyntheticTask, SyntheticUltrasound
    from arlkit.errors import ConfigError

    if args.n < 1:
        raise ConfigError(f"data synth: --n must be at least 1, got {args.n}")
    if args.task is not None:
        if _organs(args.organs) is not None or args.probes is not None:
            raise ConfigError(
                "data synth: --task fixes the organ and probes; drop --organs/--probes"
            )
        data: Any = SyntheticTask(
            args.task, args.n, split=args.split, size=args.size, seed=args.seed
        )
        stem = f"{args.task}_{args.split}"
    else:
        data = SyntheticUltrasound(
            size=args.size,
            length=args.n,
            organs=_organs(args.organs),
            probes=args.probes,
            seed=args.seed,
        )
        stem = "synthetic"
    fs, root = fsspec.core.url_to_fs(args.out)
    if fs.isfile(root):
        raise ConfigError(f"data synth: --out {args.out} is a file; pass a folder (new or "
                          "without a manifest.csv) for the images and manifest.csv")
    manifest = posixpath.join(root, "manifest.csv")
    if fs.exists(manifest):  # before any image: a second set would replace the first's rows
        raise ConfigError(
            f"data synth: {args.out.rstrip('/')}/manifest.csv already exists "
            f"({_row_count(fs, manifest)}); choose another --out (one folder per set or split) "
            "or remove it"
        )
    fs.makedirs(root, exist_ok=True)
    rows = []
    for i in range(len(data)):
        img = data.render(i)
        name = f"{stem}_{i:06d}.png"
        rel = posixpath.join(img.organ, name)
        fs.makedirs(posixpath.join(root, img.organ), exist_ok=True)
        with fs.open(posixpath.join(root, rel), "wb") as f:
            f.write(_png(np.clip(img.image * 255 + 0.5, 0, 255).astype(np.uint8)))
        mask = ""
        if args.task is not None and data.spec.segmentation:
            mask = posixpath.join("masks", img.organ, name)
            fs.makedirs(posixpath.join(root, "masks", img.organ), exist_ok=True)
            with fs.open(posixpath.join(root, mask), "wb") as f:
                f.write(_png(img.labels.astype(np.uint8)))
        label = data.labels[i] if args.task is not None else -1
        rows.append((rel, img.organ, img.probe, args.split, "" if label < 0 else label, mask, ""))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    with fs.open(manifest, "w") as f:
        f.write(text.getvalue())
    console().print(f"wrote {len(rows)} images and manifest.csv to {args.out}", markup=False)
    return 0


def data_show(args: argparse.Namespace) -> int:
    """Save a contact sheet of synthetic samples to ``--out``."""
    import fsspec

    from arlkit.cli.output import console
    from arlkit.data.synthetic.phantoms import all_phantoms
    from arlkit.data.synthetic.sheet import organ_sheet, task_sheet
    from arlkit.errors import ConfigError
    from arlkit.taxonomy import Taxonomy

    if args.n < 1 or args.size < 32:
        raise ConfigError(
            f"data show: need --n >= 1 and --size >= 32, got {args.n} and {args.size}"
        )
    fs, path = fsspec.core.url_to_fs(args.out)
    if fs.isdir(path):
        raise ConfigError(f"data show: --out {args.out} is a folder; name the PNG to write, e.g. "
                          f"{args.out.rstrip('/')}/grid.png")
    if fs.isfile(path):  # an earlier sheet may be replaced, nothing else
        with fs.open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise ConfigError(f"data show: --out {args.out} exists and is not a PNG, so it "
                                  "is not written over; choose another --out")
    if args.task is not None:
        sheet = task_sheet(args.task, args.n, args.size, args.seed)
    else:
        organs = _organs(args.organs)
        if organs is None:
            families = all_phantoms()
            organs = [o for o in Taxonomy().organs if o in families]
            organs += sorted(set(families) - set(organs))  # plugin phantoms last
        sheet = organ_sheet(organs, args.n, args.size, args.seed)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    with fsspec.open(args.out, "wb") as f:
        f.write(buf.getvalue())
    console().print(f"wrote {args.out} ({sheet.width}x{sheet.height})", markup=False)
    return 0
