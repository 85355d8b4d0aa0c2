"""Downstream evaluation: linear probe, kNN, fine-tuning, UPerNet segmentation, comparisons.

The command line (``arlkit eval ...``) calls :func:`arlkit.eval.run.run_eval`; the pieces
are usable alone::

    from arlkit.eval.backbones import resolve_backbone
    from arlkit.eval.features import extract_features
    from arlkit.eval.linear import linear_probe
    from arlkit.eval.metrics import classification_metrics

Importing this package loads nothing heavy; submodules import torch (and scikit-learn or
matplotlib only when a metric or a plot is computed).
"""

__all__ = [
    "backbones",
    "badfiles",
    "compare",
    "config",
    "data",
    "features",
    "finetune",
    "knn",
    "linear",
    "manifest_checks",
    "metrics",
    "pca",
    "protocols",
    "run",
    "segment",
    "splits",
    "timm_backbone",
]
