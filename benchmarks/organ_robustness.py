"""Wrong organ labels at test time: accuracy drop of one-hot, soft-embedding and auto conditioning.

Tiny A-ViTs (width 32, 2 blocks, 8-px patches, 48-px images) stand in for trained models:
their offset networks and organ vectors are re-initialised at a visible scale (a fresh
model's zero-initialised offset networks would make any organ label irrelevant). For each
seed and downstream synthetic task, a linear probe is fitted on features computed with the
true organ; then 30% of the test organ labels are replaced by a different random organ.
``auto`` conditions on the organ head's probabilities instead of the label. Prints the
mean accuracy (clean, corrupted, drop) over seeds and tasks, and the organ-head accuracy.

    python benchmarks/organ_robustness.py [--fraction 0.3] [--seeds 3] [--offset-std 0.05]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from arlkit.data.synthetic import SyntheticTask, SyntheticUltrasound
from arlkit.engine.export import build_backbone
from arlkit.organ import (
    AutoOrganBackbone,
    organ_features,
    robustness_row,
    stack_samples,
    train_organ_classifier,
)


def backbone(conditioner: str, seed: int, offset_std: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_backbone({
        "backbone": {"name": "avit", "params": dict(size="tiny", embed_dim=32, depth=2,
                                                     num_heads=2, patch_size=8, img_size=48)},
        "conditioner": {"name": conditioner, "params": {}},
        "deform_op": {"name": "reference", "params": {}},
        "offset_net": {"name": "dwconv", "params": {}},
        "taxonomy": list(__import__("arlkit.taxonomy").taxonomy.DEFAULT_ORGANS),
    }).eval()
    for blk in model.blocks:
        torch.nn.init.normal_(blk.offset_net.proj.weight, std=offset_std)
        table = blk.conditioner.embedding if conditioner == "soft_embedding" else blk.conditioner.proj.weight
        torch.nn.init.normal_(table, std=1.0)  # same scale of organ vectors in both kinds
    return model


def task_sets(task: str, seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    out = []
    for split, n in (("train", 160), ("test", 160)):
        ds = SyntheticTask(task, n, split=split, size=48, seed=seed)
        x, o = stack_samples(ds)
        out.append((x, o, torch.tensor(ds.labels)))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default="breast,thyroid")
    ap.add_argument("--offset-std", type=float, default=0.05,
                    help="init std of the offset networks' last layer (how much the organ matters)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    corpus_x, corpus_o = stack_samples(SyntheticUltrasound(size=48, length=480, seed=0))
    results: dict[str, list[tuple[float, float]]] = {}
    head_acc: list[float] = []
    for seed in range(args.seeds):
        models = {c: backbone(c, seed, args.offset_std) for c in ("onehot", "soft_embedding")}
        autos = {}
        for c, m in models.items():
            head = train_organ_classifier(m, corpus_x[:400], corpus_o[:400], m.taxonomy, seed=seed)
            pred = head(organ_features(m, corpus_x[400:])).argmax(-1)
            head_acc.append(float((pred == corpus_o[400:]).float().mean()))
            autos[c] = AutoOrganBackbone(m, head)
        for task in args.tasks.split(","):
            train, test = task_sets(task, seed)
            for name, mode, model in (
                ("onehot (label)", "label", models["onehot"]),
                ("soft_embedding (label)", "label", models["soft_embedding"]),
                ("auto (soft_embedding)", "auto", autos["soft_embedding"]),
                ("auto (onehot)", "auto", autos["onehot"]),
            ):
                row = robustness_row(mode, model, train, test, args.fraction, seed)
                results.setdefault(name, []).append((row.clean, row.corrupted))
    print(f"organ head accuracy on held-out corpus images (16 organs, chance 0.062): "
          f"mean {statistics.mean(head_acc):.3f} (min {min(head_acc):.3f}, max {max(head_acc):.3f})")
    print(f"{int(args.fraction * 100)}% of test organ labels corrupted; tasks {args.tasks}; "
          f"{args.seeds} seeds; offset std {args.offset_std}; probe accuracy, mean over seeds x tasks")
    print(f"| {'conditioning':24s} | clean | corrupted | drop |")
    print(f"|{'-' * 26}|-------|-----------|------|")
    for name, vals in results.items():
        clean = statistics.mean(v[0] for v in vals)
        bad = statistics.mean(v[1] for v in vals)
        print(f"| {name:24s} | {clean:.3f} | {bad:9.3f} | {clean - bad:+.3f} |")


if __name__ == "__main__":
    main()
