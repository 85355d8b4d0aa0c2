"""Feature extraction for the linear probe: images/s of A-ViT vs a timm ViT of the same size.

What is timed is :func:`arlkit.eval.features.extract_features` — DataLoader over in-memory
samples, frozen forward in ``no_grad``, ``cls+avg`` pooling — for three backbones of one
width/depth/heads/patch:

- ``timm-vit``: ``timm`` ``VisionTransformer`` (1 input channel), the baseline;
- ``avit-plain``: A-ViT with ``deformable=False`` (the same code path as the paper's model);
- ``avit``: A-ViT with ACDT blocks and the organ condition (the paper's model).

All run in one process, interleaved (one pass of each per repeat), after a warm-up pass;
the table gives median img/s and the ratio to timm. Defaults are small enough for a
2-core CPU (under two minutes). On a GPU::

    python benchmarks/bench_eval.py --device cuda --size base --image-size 224 \\
        --images 2048 --batch 256 --dtype bf16

Usage: ``python benchmarks/bench_eval.py [--size tiny] [--image-size 96] [--images 128]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch


def _samples(n: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, size, size, generator=g), "organ": i % 16, "label": i % 2}
            for i in range(n)]


def _models(size: str, depth: int | None, image_size: int, device: torch.device) -> dict:
    import timm

    from arlkit.eval.backbones import TimmBackbone
    from arlkit.models.avit import SIZES, AViT

    dim, d0, heads = SIZES[size]
    depth = depth or d0
    torch.manual_seed(0)
    vit = timm.create_model(f"vit_{size}_patch16_224", pretrained=False, in_chans=1, num_classes=0,
                            depth=depth, img_size=image_size)
    common = dict(size=size, depth=depth, img_size=image_size, patch_size=16)
    models = {
        "timm-vit": TimmBackbone(vit),
        "avit-plain": AViT(deformable=False, **common),
        "avit": AViT(deformable=True, deform_op=("auto", {}), **common),
    }
    assert all(m.embed_dim == dim for m in models.values()) and heads
    return {k: m.to(device).eval() for k, m in models.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    p.add_argument("--depth", type=int, default=None, help="override the depth of --size")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--images", type=int, default=128, help="images per extraction pass")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    from arlkit.eval.features import extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = _models(args.size, args.depth, args.image_size, device)
    data = _samples(args.images, args.image_size)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())

    def one_pass(model: torch.nn.Module) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            extract_features(model, data, pool="cls+avg", batch_size=args.batch, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.images / (time.perf_counter() - start)

    for model in models.values():  # warm-up (lazy imports, allocator, kernels)
        one_pass(model)
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, model in models.items():  # interleaved: drifting load hits all alike
            rates[name].append(one_pass(model))

    base = statistics.median(rates["timm-vit"])
    print(f"feature extraction, {args.size} (depth {models['avit'].depth}), {args.image_size}px, "
          f"batch {args.batch}, {args.images} images/pass, {args.repeats} repeats, "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{'backbone':<12} {'median img/s':>13} {'min':>9} {'max':>9} {'vs timm':>8}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<12} {med:>13.1f} {min(r):>9.1f} {max(r):>9.1f} {med / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
