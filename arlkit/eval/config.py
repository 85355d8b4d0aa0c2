"""Settings of one evaluation (:class:`EvalConfig`) and the protocols' defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_BATCH", "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_WD", "MIN_LINEAR_STEPS", "PROTOCOLS", "EvalConfig"]

PROTOCOLS: tuple[str, ...] = ("linear", "knn", "finetune", "segment")
#: Epochs of training protocols (kNN trains nothing). Fine-tuning: 50, the default of MAE's
#: ``main_finetune.py``; segmentation: 20, where UPerNet on a random-init backbone stops
#: improving on ``synthetic:cardiac_seg`` (200 images: Dice 0.69 / 0.89 / 0.90 after
#: 5 / 20 / 50 epochs). Five epochs of a few hundred images, the earlier default, are ~30
#: fine-tuning steps: too few for any backbone (benchmarks/RESULTS.md, issue 7).
DEFAULT_EPOCHS: dict[str, int] = {"linear": 100, "knn": 0, "finetune": 50, "segment": 20}
#: Without ``--epochs``/``--steps`` the linear probe runs 100 epochs but at least this many
#: optimizer steps of 256 examples: 100 epochs of 400 images are only 200 steps, which left
#: the probe about 5 points short of a converged logistic regression on the same features.
MIN_LINEAR_STEPS = 2000
#: Images per batch: feature extraction, fine-tuning, segmentation.
DEFAULT_BATCH: dict[str, int] = {"linear": 64, "knn": 64, "finetune": 32, "segment": 16}
#: Learning rate of fine-tuning / the decoder (the linear probe sweeps its own).
DEFAULT_LR: dict[str, tuple[float, ...] | None] = {"linear": None, "knn": None, "finetune": (5e-4,), "segment": (1e-3,)}
DEFAULT_WD: dict[str, float] = {"linear": 0.0, "knn": 0.0, "finetune": 0.05, "segment": 0.05}


@dataclass
class EvalConfig:
    """Everything that determines an evaluation (saved as ``settings.json``).

    Attributes:
        protocol: ``linear``, ``knn``, ``finetune`` or ``segment``.
        backbone: export file, run directory, ``random[:SEED]`` or ``timm:NAME[:WEIGHTS]``.
        data: ``synthetic:TASK`` or a labelled manifest / folder.
        arch: architecture of ``random`` (recipe or export).
        image_size: square input side (default: the backbone's nominal size).
        n_train, n_val, n_test: synthetic split sizes.
        data_seed: seed of the synthetic data (fixed across protocol seeds).
        label_fractions: stratified shares of the training split to use.
        batch_size: images per forward pass / training step (protocol default when None:
            64 for feature extraction, 32 fine-tuning, 16 segmentation).
        epochs: linear-probe or fine-tuning epochs (protocol default when None).
        steps: optimizer steps, overriding ``epochs``.
        lrs: linear-probe sweep (``sgd``); the first value is the fine-tuning / decoder rate.
        weight_decay: protocol default when None; with the ``lbfgs`` solver a given value
            replaces the sweep of L2 penalties.
        solver: linear probe: ``sgd`` (DINO/MAE: learning-rate sweep, fixed steps) or
            ``lbfgs`` (CLIP: converged logistic regression, L2-penalty sweep).
        layer_decay, drop_path: fine-tuning and segmentation.
        freeze_backbone: segmentation with a frozen backbone.
        decoder_channels: UPerNet width (default: half the backbone width, within 64..512).
        pool: ``cls``, ``avg`` or ``cls+avg``.
        n_last_blocks: linear probe and kNN: pool the outputs of the last ``n`` blocks
            (DINO's ``n_last_blocks``; see :func:`arlkit.eval.features.pool_blocks`).
        use_organ: pass the organ condition to the backbone.
        k, temperature: kNN.
        n_boot: bootstrap draws of the intervals.
        seed: seed of everything random in the protocol.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        workers: DataLoader workers.
        cache_dir: feature cache (None: none).
        out: output directory (default :func:`default_out`).
        overwrite: replace the results of an earlier evaluation in ``out`` (else an error).
    """

    protocol: str
    backbone: str
    data: str
    arch: str | None = None
    image_size: int | None = None
    n_train: int = 200
    n_val: int = 100
    n_test: int = 200
    data_seed: int = 0
    label_fractions: tuple[float, ...] = (1.0,)
    batch_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    lrs: tuple[float, ...] | None = None
    weight_decay: float | None = None
    solver: str = "sgd"
    layer_decay: float = 0.75
    drop_path: float = 0.1
    freeze_backbone: bool = False
    decoder_channels: int | None = None
    pool: str = "cls+avg"
    n_last_blocks: int = 1
    use_organ: bool = True
    k: int = 20
    temperature: float = 0.07
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    cache_dir: str | None = os.path.join("runs", "eval", ".cache")
    out: str | None = None
    overwrite: bool = False
