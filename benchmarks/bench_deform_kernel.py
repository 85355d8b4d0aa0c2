"""Benchmark of the fused Triton deform op against its baselines (forward and forward+backward).

Variants, all at one A-ViT block's shapes (default ViT-B/16 at 224²: B=256, C=768, 14×14
grid, 3×3 kernel, G=12 offset groups, depthwise weights, bfloat16), timed in one process,
interleaved round by round, after warm-up, with CUDA events; medians are printed:

* ``triton``       the fused kernel (``arlkit.ops.custom_op.deform_conv_triton``); at these
                   shapes its ``∂x`` is the atomic-free "dense" kernel;
* ``triton_scatter`` the same with ``∂x`` by float32 atomics (the path for large grids);
* ``triton_det``   the deterministic backward (fixed-point atomics for ``∂weight``);
* ``reference``    the pure-PyTorch ``reference`` op;
* ``dwconv_cl``    ``nn.Conv2d(C, C, 3, groups=C)`` on channels-last tensors (the target);
* ``dwconv_nchw``  the same convolution on NCHW tensors;
* ``torchvision``  ``torchvision.ops.deform_conv2d`` (slow; fewer rounds, see ``--tv-rounds``).

Memory-traffic floor. The operator must read and write at least (bf16, 2 bytes/element;
``N = B·H·W = 50,176`` pixels, ``C = 768``, ``2·G·K = 216`` offset channels)::

    forward:  x 77.07 MB + offset 21.68 MB + weight 0.01 MB + y 77.07 MB          = 175.8 MB
    backward: gy 77.07 + x 77.07 + offset 21.68 + weight 0.01                      (reads)
              + gx 77.07 + g_offset 21.68 + g_weight 0.01                          (writes)
                                                                                  = 274.6 MB
    forward + backward                                                            = 450.4 MB
    (with a DCNv2 mask (B, G·K, H, W): + 10.84 MB read forward, + 10.84 read and
     + 10.84 written backward = 482.9 MB)

At the H200's 4.8 TB/s that is 36.6 µs forward, 57.2 µs backward, **93.8 µs forward +
backward** (100.6 µs with a mask); on an H100 SXM (3.35 TB/s) 134 µs. The kernels as written
move more: re-reads of ``x``, ``gy`` and offsets that miss L2, and, on the scatter path,
a float32 ``∂x`` buffer (zero-fill 154 MB, read-modify-write in L2 and write-back of up to
154 MB, a 154 MB read for the cast to bf16: about 0.91 GB, 190 µs at 4.8 TB/s) fed by
``B·H·W·C·K·4 = 1.39·10⁹`` float32 atomics. The table prints each variant's time next to the floor
and the fraction of the floor reached (floor / time).

Usage::

    python benchmarks/bench_deform_kernel.py                     # CUDA, ViT-B shapes, bf16
    python benchmarks/bench_deform_kernel.py --sweep             # + block-size variants of triton
    python benchmarks/bench_deform_kernel.py --smoke             # CPU: Triton interpreter, tiny

Without CUDA the script refuses, except in ``--smoke`` mode, which runs every variant once at
a tiny size under ``TRITON_INTERPRET=1`` and checks it against the reference (its times say
nothing about GPU speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # bytes/s, by device name


def traffic_bytes(b: int, c: int, h: int, w: int, g: int, k: int, elt: int, mask: bool) -> dict:
    """Minimum bytes moved by the operator (every tensor read or written exactly once)."""
    n = b * h * w
    x = y = n * c * elt
    off = n * 2 * g * k * elt
    msk = n * g * k * elt if mask else 0
    wgt = c * k * elt
    fwd = x + off + msk + wgt + y
    bwd = (y + x + off + msk + wgt) + (x + off + msk + wgt)  # reads gy, x, ...; writes grads
    return {"fwd": fwd, "fwd+bwd": fwd + bwd}


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--grid", type=int, default=14, help="tokens per side (224/16)")
    ap.add_argument("--groups", type=int, default=12, help="offset groups G")
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--mask", action="store_true", help="with a DCNv2 modulation mask")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tv-rounds", type=int, default=3, help="rounds for torchvision (slow)")
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s; default by GPU name")
    ap.add_argument(
        "--variants",
        default="triton,triton_scatter,triton_det,reference,dwconv_cl,dwconv_nchw,torchvision",
    )
    ap.add_argument("--sweep", action="store_true", help="add block-size variants of triton")
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny run under TRITON_INTERPRET=1")
    return ap.parse_args()


def main() -> int:
    args = _parse()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        args.batch, args.dim, args.grid, args.groups = 2, 24, 5, 3
        args.warmup, args.rounds, args.tv_rounds = 1, 1, 1
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "bench_deform_kernel: needs a CUDA GPU (the fused kernel is GPU code); "
            "run with --smoke for a tiny CPU check under Triton's interpreter",
            file=sys.stderr,
        )
        return 2
    from arlkit.ops import triton_deform
    from arlkit.ops.custom_op import deform_conv_triton
    from arlkit.ops.reference import deform_conv_reference
    from arlkit.ops.tv import deform_conv_torchvision

    dev = "cpu" if args.smoke else "cuda"
    dtype = getattr(torch, DTYPES[args.dtype])
    b, c, h, w, g, ks = args.batch, args.dim, args.grid, args.grid, args.groups, args.kernel
    k = ks * ks
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=dev) * scale).to(dtype)

    x = rnd(b, h * w, c).view(b, h, w, c).permute(0, 3, 1, 2)  # tokens as a channels-last grid
    offset = rnd(b, h, w, 2 * g * k, scale=1.5).permute(0, 3, 1, 2)  # as a 1×1 conv emits it
    mask = rnd(b, h, w, g * k).sigmoid().permute(0, 3, 1, 2) if args.mask else None
    weight = rnd(c, 1, k, scale=0.3)
    grad = rnd(b, c, h, w).contiguous(memory_format=torch.channels_last)
    conv_cl = torch.nn.Conv2d(c, c, ks, padding=ks // 2, groups=c, bias=False).to(dev, dtype)
    conv_cl = conv_cl.to(memory_format=torch.channels_last)
    conv_nchw = torch.nn.Conv2d(c, c, ks, padding=ks // 2, groups=c, bias=False).to(dev, dtype)
    x_nchw = x.contiguous()

    def deform(fn: Callable[..., torch.Tensor], **kw) -> Callable[[bool], None]:
        leaves = [t.detach().clone().requires_grad_() for t in (x, offset, weight)]
        msk = None if mask is None else mask.detach().clone().requires_grad_()

        def run(backward: bool) -> None:
            for leaf in (*leaves, msk):  # no gradient accumulation inside the timed region
                if leaf is not None:
                    leaf.grad = None
            with torch.set_grad_enabled(backward):
                y = fn(*leaves, msk, kernel_size=ks, **kw)
                if backward:
                    y.backward(grad)

        return run

    def conv(module: torch.nn.Module, inp: torch.Tensor) -> Callable[[bool], None]:
        leaf = inp.detach().clone().requires_grad_()

        def run(backward: bool) -> None:
            leaf.grad = None
            module.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(backward):
                y = module(leaf)
                if backward:
                    y.backward(grad)

        return run

    def tuned(cfg: dict[str, int], deterministic: bool = False) -> Callable[[bool], None]:
        inner = deform(deform_conv_triton, deterministic=deterministic)

        def run(backward: bool) -> None:
            triton_deform.TUNING.clear()
            triton_deform.TUNING.update(cfg)
            try:
                inner(backward)
            finally:
                triton_deform.TUNING.clear()

        return run

    all_variants = {
        "triton": deform(deform_conv_triton, deterministic=False),
        "triton_scatter": tuned({"dense_x": 0}),
        "triton_det": deform(deform_conv_triton, deterministic=True),
        "reference": deform(deform_conv_reference),
        "dwconv_cl": conv(conv_cl, x),
        "dwconv_nchw": conv(conv_nchw, x_nchw),
        "torchvision": deform(deform_conv_torchvision),
    }
    variants = {n: all_variants[n] for n in args.variants.split(",")}
    if args.sweep:
        for bp in (16, 32, 64):
            for warps in (2, 4, 8):
                variants[f"triton_p{bp}_w{warps}"] = tuned({"block_p": bp, "num_warps": warps})
        for bq in (16, 64):
            variants[f"triton_q{bq}"] = tuned({"block_q": bq})

    if args.smoke:  # correctness of every deform variant against the reference, once
        ref = deform_conv_reference(x.double(), offset.double(), weight.double(),
                                    None if mask is None else mask.double(), kernel_size=ks)  # fmt: skip
        for fn in (deform_conv_triton, deform_conv_torchvision):
            out = fn(x, offset, weight, mask, kernel_size=ks)
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            print(f"smoke: {fn.__name__}: max rel. error vs reference {err:.2e}")
            if err > 2e-2:
                return 1
    if dev == "cuda":  # the same check at full size, so a timing never hides a wrong kernel
        sub = slice(0, min(b, 8))
        args_ = [t[sub].double() if t is not None else None for t in (x, offset)]
        ref = deform_conv_reference(*args_, weight.double(),
                                    None if mask is None else mask[sub].double(), kernel_size=ks)  # fmt: skip
        out = deform_conv_triton(x[sub], offset[sub], weight,
                                 None if mask is None else mask[sub], kernel_size=ks)  # fmt: skip
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        print(f"check: triton vs reference (first {sub.stop} images): max rel. error {err:.2e}")

    def timed(run: Callable[[bool], None], backward: bool) -> float:
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(backward)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        run(backward)
        return time.perf_counter() - t0

    times: dict[tuple[str, str], list[float]] = {}
    for name, run in variants.items():
        for _ in range(args.warmup if name != "torchvision" else 1):
            run(True)
    for r in range(args.rounds):
        for name, run in variants.items():
            if name == "torchvision" and r >= args.tv_rounds:
                continue
            for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
                times.setdefault((name, mode), []).append(timed(run, bwd))

    floor = traffic_bytes(b, c, h, w, g, k, torch.finfo(dtype).bits // 8, mask is not None)
    gpu = torch.cuda.get_device_name() if dev == "cuda" else "cpu (Triton interpreter)"
    bw = args.bandwidth or next((v for n, v in BANDWIDTH.items() if n in gpu), 4.8e12)
    print(f"device: {gpu}; B={b} C={c} {h}x{w} K={k} G={g} {args.dtype} mask={args.mask}")
    print(f"floor at {bw / 1e12:.2f} TB/s: fwd {floor['fwd'] / 1e6:.1f} MB = "
          f"{floor['fwd'] / bw * 1e6:.1f} us; fwd+bwd {floor['fwd+bwd'] / 1e6:.1f} MB = "
          f"{floor['fwd+bwd'] / bw * 1e6:.1f} us")  # fmt: skip
    base = {m: statistics.median(times[("dwconv_cl", m)]) for m in ("fwd", "fwd+bwd")
            if ("dwconv_cl", m) in times}  # fmt: skip
    print(f"{'variant':<18}{'mode':<9}{'median ms':>11}{'vs dwconv_cl':>14}{'floor/time':>12}")
    for (name, mode), ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / base[mode]:.2f}x" if mode in base else "-"
        frac = f"{floor[mode] / bw / med:.1%}" if not name.startswith("dwconv") else "-"
        print(f"{name:<18}{mode:<9}{med * 1e3:>11.3f}{ratio:>14}{frac:>12}")
    if args.smoke:
        print("smoke mode: CPU interpreter times say nothing about GPU speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
