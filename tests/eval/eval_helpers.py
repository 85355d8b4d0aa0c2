"""Tiny stand-ins shared by the evaluation tests: a 2-block, 32-wide A-ViT on 32 px images.

Imported by name (``from eval_helpers import ...``): a module of its own rather than
``conftest``, which other test folders also have, so any selection of test files collects.
"""

from __future__ import annotations

import argparse

import torch

TAXONOMY = [
    "breast", "thyroid", "gallbladder", "liver", "kidney", "spleen", "pancreas", "bladder",
    "uterus_ovary", "prostate", "fetal", "cardiac", "lung", "carotid", "musculoskeletal", "testis",
]


def tiny_config() -> dict:
    """Backbone configuration (the form ``arlkit.engine.export.backbone_config`` returns)."""
    return {
        "backbone": {"name": "avit", "params": {
            "size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
            "img_size": 32,
        }},
        "conditioner": {"name": "onehot", "params": {}},
        "deform_op": {"name": "reference", "params": {}},
        "offset_net": {"name": "dwconv", "params": {}},
        "taxonomy": TAXONOMY,
    }


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    from arlkit.engine.export import build_backbone

    torch.manual_seed(seed)
    return build_backbone(tiny_config()).eval()


def eval_parser() -> argparse.ArgumentParser:
    """A parser with only the ``eval`` group and ``viz pca``; handlers raise instead of printing."""
    from arlkit.cli.eval import add_viz_pca, register

    parser = argparse.ArgumentParser(prog="arlkit")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    viz = sub.add_parser("viz")
    add_viz_pca(viz.add_subparsers(dest="viz_command"))
    return parser


def run_cli(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)
    return int(args.handler(args))


#: Sizes that keep a synthetic evaluation to a second or two.
SMALL = ["--image-size", "32", "--n-train", "24", "--n-val", "12", "--n-test", "24",
         "--n-boot", "50", "--device", "cpu", "--batch-size", "16"]


def write_manifest(folder, rows: list[dict], name: str = "manifest.csv", size: int = 32,
                   missing: tuple[str, ...] = (), truncated: tuple[str, ...] = ()) -> str:
    """Write a PNG per row (``path`` relative to ``folder``) and the CSV manifest ``name``.

    Rows whose path is in ``missing`` get no file; those in ``truncated`` get the first
    40 bytes of a PNG. Returns the manifest's path.
    """
    import csv
    import io
    import pathlib

    import numpy as np
    from PIL import Image

    folder = pathlib.Path(folder)
    rng = np.random.default_rng(0)
    for r in rows:
        target = folder / r["path"]
        if r["path"] in missing:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, format="PNG")
        target.write_bytes(buf.getvalue()[:40] if r["path"] in truncated else buf.getvalue())
    path = folder / name
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def labelled_rows(n_train: int = 8, n_val: int = 4, n_test: int = 4) -> list[dict]:
    """Rows ``im<i>.png`` of a two-class thyroid task with a split column."""
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return [{"path": f"im{i}.png", "organ": "thyroid", "label": str(i % 2), "split": s}
            for i, s in enumerate(splits)]
