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
