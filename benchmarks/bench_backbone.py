"""Benchmark of the anatomy-aware backbone against its baselines, in one process.

(a) Deformable operator forward+backward at the backbone's shapes (``B×C×14×14``,
    channels-last, ``G = heads`` offset groups, 3×3 kernel, depthwise weights) against a
    depthwise ``nn.Conv2d`` of the same shape and against ``torchvision.ops.deform_conv2d``.
(b) Training step (forward, loss, backward, AdamW step) of A-ViT against timm's
    ``vit_<size>_patch16_224`` (1 input channel) and against A-ViT in plain-ViT mode.
(c) Peak memory of each (CUDA only).

Candidates run interleaved round by round after warm-up; the table shows medians and the
ratio to the baseline of each section. Defaults run on a CPU in well under two minutes;
the GPU configuration of the issue is::

    python benchmarks/bench_backbone.py --device cuda --size base --batch 256 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from arlkit.models.avit import SIZES, AViT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    cases: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int
) -> dict[str, tuple[float, float | None]]:
    """Median seconds (and peak CUDA memory in bytes) per case, run interleaved."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    peaks: dict[str, float | None] = {name: None for name in cases}
    for r in range(warmup + rounds):
        for name, fn in cases.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) - base
                    peaks[name] = max(peaks[name] or 0.0, float(peak))
    return {name: (statistics.median(t), peaks[name]) for name, t in times.items()}


def _grid_sample_deform(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """The ``grid_sample`` formulation the issue's prototype used (depthwise, 3×3), via autograd.

    Samples all ``K`` points at once into a ``(B, C, K, H, W)`` tensor that autograd keeps
    for the weight gradient (the memory the reference operator avoids).
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    g = offset.shape[1] // (2 * k)
    off = offset.view(b, g, k, 2, h, w).float()
    kk = torch.arange(k, device=x.device)
    ki = (kk // 3 - 1).float().view(1, 1, k, 1, 1)
    kj = (kk % 3 - 1).float().view(1, 1, k, 1, 1)
    hh = torch.arange(h, device=x.device).float().view(1, 1, 1, h, 1)
    ww = torch.arange(w, device=x.device).float().view(1, 1, 1, 1, w)
    py, px = hh + ki + off[:, :, :, 0], ww + kj + off[:, :, :, 1]  # (B, G, K, H, W)
    # pixel centres at integers; align_corners=False maps pixel i to (2i + 1) / size - 1
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1).view(b * g, k * h, w, 2)
    s = torch.nn.functional.grid_sample(
        x.reshape(b * g, c // g, h, w), grid.to(x.dtype), align_corners=False
    )  # (B·G, C/G, K·H, W)
    return torch.einsum("bckhw,ck->bchw", s.view(b, c, k, h, w), weight[:, 0])


def _op_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    from arlkit.registry import default_registries

    dim, _, heads = SIZES[args.size]
    side = args.img_size // 16
    k = 9
    gen = torch.Generator(device="cpu").manual_seed(0)
    # tokens (B, N, C) laid out as a grid: channels-last memory, as inside the block
    x = torch.randn(args.batch, side, side, dim, generator=gen).to(device, dtype)
    x = x.permute(0, 3, 1, 2).requires_grad_()
    offset = (torch.randn(args.batch, 2 * heads * k, side, side, generator=gen) * 1.5).to(
        device, dtype
    )
    offset.requires_grad_()
    weight = torch.randn(dim, 1, k, generator=gen).to(device, dtype).requires_grad_()
    conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False).to(device, dtype)

    def conv_step() -> None:
        conv(x).sum().backward()

    def grid_sample_step() -> None:
        _grid_sample_deform(x, offset, weight).sum().backward()

    cases: dict[str, Callable[[], None]] = {
        "depthwise nn.Conv2d": conv_step,
        "grid_sample prototype": grid_sample_step,
    }
    for name in args.ops:
        try:
            op = default_registries.deform_ops.build(name)
        except Exception as exc:  # an op that is not available here (e.g. triton on CPU)
            print(f"skipping deform op {name!r}: {exc}", file=sys.stderr)
            continue

        def step(op: Callable = op) -> None:
            op(x, offset, weight, kernel_size=3).sum().backward()

        cases[f"deform op: {name}"] = step
    return cases


def _step_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    import timm

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if dtype == torch.bfloat16
        else nullcontext()
    )
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(args.batch, 1, args.img_size, args.img_size, generator=gen).to(device)
    organ = torch.randint(0, 16, (args.batch,), generator=gen).to(device)
    models: dict[str, tuple[nn.Module, bool]] = {
        f"timm vit_{args.size}_patch16": (
            timm.create_model(
                f"vit_{args.size}_patch16_224", in_chans=1, num_classes=0, img_size=args.img_size
            ),
            False,
        ),
        "A-ViT plain mode": (AViT(size=args.size, img_size=args.img_size, deformable=False), False),
    }
    for name in args.step_ops:
        models[f"A-ViT ({name} op)"] = (
            AViT(size=args.size, img_size=args.img_size, deform_op=(name, {})),
            True,
        )
    cases: dict[str, Callable[[], None]] = {}
    for name, (model, takes_organ) in models.items():
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model: nn.Module = model, opt=opt, takes_organ: bool = takes_organ) -> None:
            with autocast:
                out = model(images, organ) if takes_organ else model(images)
                loss = out.float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        cases[name] = step
    return cases


def _table(title: str, results: dict, baseline: str, batch: int, throughput: bool) -> None:
    base_t, base_m = results[baseline]
    print(f"\n{title}  (baseline: {baseline})")
    head = f"{'case':<32}{'median ms':>12}{'x baseline':>12}"
    head += f"{'img/s':>10}" if throughput else ""
    head += f"{'peak MiB':>11}{'mem x':>8}" if base_m is not None else ""
    print(head)
    print("-" * len(head))
    for name, (t, mem) in results.items():
        row = f"{name:<32}{t * 1e3:>12.2f}{t / base_t:>12.2f}"
        row += f"{batch / t:>10.1f}" if throughput else ""
        if base_m is not None and mem is not None:
            row += f"{mem / 2**20:>11.0f}{mem / max(base_m, 1.0):>8.2f}"
        print(row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--ops",
        default=None,
        help="deform ops for (a), comma-separated registry names (default: reference,numba,"
        "torchvision on the CPU; reference,torchvision,triton,auto on CUDA)",
    )
    p.add_argument(
        "--step-ops",
        default=None,
        help="deform ops whose A-ViT training step is timed in (b) (default: reference,numba "
        "on the CPU; reference,triton on CUDA)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.ops is None:
        args.ops = "reference,torchvision,triton,auto" if cuda else "reference,numba,torchvision"
    if args.step_ops is None:
        args.step_ops = "reference,triton" if cuda else "reference,numba"
    args.ops = [o for o in args.ops.split(",") if o]
    args.step_ops = [o for o in args.step_ops.split(",") if o]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {name} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"size {args.size}, batch {args.batch}, {args.img_size}px, {args.dtype}, "
        f"{args.rounds} rounds after {args.warmup} warm-up"
    )
    torch.manual_seed(0)
    ops = _measure(_op_cases(args, device, dtype), device, args.rounds, args.warmup)
    side = args.img_size // 16
    _table(
        f"(a) deform op fwd+bwd, x = ({args.batch}, {SIZES[args.size][0]}, {side}, {side})",
        ops,
        "depthwise nn.Conv2d",
        args.batch,
        throughput=False,
    )
    conv_t = ops["depthwise nn.Conv2d"][0]
    for name, (t, _) in ops.items():
        if name.startswith("deform op"):
            verdict = "meets" if t / conv_t <= 8 else "misses"
            print(f"{name}: {t / conv_t:.1f}x the depthwise conv ({verdict} the <= 8x target)")
    if "deform op: reference" in ops and "deform op: torchvision" in ops:
        ratio = ops["deform op: torchvision"][0] / ops["deform op: reference"][0]
        print(f"reference is {ratio:.1f}x faster than torchvision.ops.deform_conv2d")
    steps = _measure(_step_cases(args, device, dtype), device, args.rounds, args.warmup)
    vit = f"timm vit_{args.size}_patch16"
    _table("(b) training step (fwd + loss + bwd + AdamW)", steps, vit, args.batch, throughput=True)
    vit_t, vit_m = steps[vit]
    for name, (t, mem) in steps.items():
        if name.startswith("A-ViT ("):
            line = f"{name}: {vit_t / t:.2f}x the ViT throughput (goal >= 0.8x)"
            if mem is not None and vit_m:
                line += f", {mem / vit_m:.2f}x its peak memory (goal <= 1.3x)"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
