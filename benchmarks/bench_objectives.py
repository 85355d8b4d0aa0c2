"""Step time of the triple objective, rung by rung, relative to MIM alone.

Configurations (all on the same two global views per image, same encoder):

1. ``mim``           — MIM only;
2. ``+adv fixed``    — + speckle GAN generator term with a fixed λ (``fixed`` balancer)
                       and the discriminator's own step;
3. ``+adv adaptive`` — λ from the gradient-norm ratio on every step (two extra
                       ``autograd.grad`` calls against the decoder's last layer; the
                       adversarial one back-propagates through the discriminator);
4. ``+adv every10``  — λ recomputed every 10 steps;
5. ``+sd``           — 3 plus DINO self-distillation: EMA teacher forward, projection
                       heads, the loss and the EMA update.

Configurations are timed interleaved in one process after a warm-up (the order
rotates every round); each round times ``--steps`` consecutive steps per
configuration, and the table shows the median over rounds of the mean step time,
its spread (interquartile range over median: ratios closer than that are noise),
and its ratios to MIM only and to the fixed-λ rung.

    python benchmarks/bench_objectives.py                  # small CPU setting
    python benchmarks/bench_objectives.py --device cuda --img 224 --patch 16 \\
        --dim 768 --depth 12 --heads 12 --batch 64 --out-dim 65536 --dtype bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from arlkit.balancers import FixedWeights, GradNormRatio
from arlkit.losses import (
    MaskGenerator,
    SelfDistillationLoss,
    SpeckleGANLoss,
    masked_patch_pairs,
    mim_loss,
    patchify,
)
from arlkit.models.discriminator import PatchDiscriminator
from arlkit.models.ema import ema_update
from arlkit.models.heads import DINOHead


class Student(nn.Module):
    """timm ViT with a SimMIM mask token, a linear pixel decoder and a DINO head."""

    def __init__(self, args: argparse.Namespace, with_head: bool) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=args.img,
            patch_size=args.patch,
            in_chans=1,
            num_classes=0,
            embed_dim=args.dim,
            depth=args.depth,
            num_heads=args.heads,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, args.dim))
        self.decoder = nn.Linear(args.dim, args.patch * args.patch)
        self.head = DINOHead(args.dim, out_dim=args.out_dim) if with_head else None

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> (class token (B, C), predicted patches (B, N, P·P))."""
        t = self.vit.patch_embed(x)  # (B, N, C)
        if mask is not None:
            t = torch.where(mask[..., None], self.mask_token.to(t.dtype), t)
        t = self.vit.norm(self.vit.blocks(self.vit.norm_pre(self.vit._pos_embed(t))))
        return t[:, 0], self.decoder(t[:, self.vit.num_prefix_tokens :])


class Config:
    """One rung: models, optimizers and the step function."""

    def __init__(self, name: str, args: argparse.Namespace, adv: str | None, sd: bool) -> None:
        torch.manual_seed(0)  # same initial weights in every configuration
        dev = torch.device(args.device)
        self.name, self.args, self.adv, self.sd = name, args, adv, sd
        self.student = Student(args, with_head=sd).to(dev)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
        self.disc = PatchDiscriminator(in_dim=1, base_channels=32).to(dev) if adv else None
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=1e-4) if self.disc else None
        self.gan = SpeckleGANLoss(start_step=0)
        self.balancer: Callable = {
            None: FixedWeights(),
            "fixed": FixedWeights({"speckle_gan": 0.1}),
            "adaptive": GradNormRatio(every=1),
            "every10": GradNormRatio(every=10),
        }[adv]
        if sd:
            self.teacher = copy.deepcopy(self.student).requires_grad_(False)
            self.sd_loss = SelfDistillationLoss(out_dim=args.out_dim).to(dev)
        self.step_count = 0

    def step(self, views: Tensor, mask: Tensor) -> None:
        a, step = self.args, self.step_count
        amp = (
            torch.autocast(views.device.type, dtype=torch.bfloat16)
            if a.dtype == "bf16"
            else nullcontext()
        )
        with amp:
            cls, pred = self.student(views, mask)
            target = patchify(views, a.patch)
            losses = {"mim": mim_loss(pred, target, mask)}
            if self.disc is not None:
                fake, real = masked_patch_pairs(pred, target, mask, a.patch)
                self.disc.requires_grad_(False)
                losses["speckle_gan"] = self.gan.generator_loss(self.disc(fake), step)
            if self.sd:
                with torch.no_grad():
                    t_cls, _ = self.teacher(views, None)
                    t_out = self.teacher.head(t_cls)
                losses["self_distillation"] = self.sd_loss(self.student.head(cls), t_out, step)
            total, _ = self.balancer(losses, self.student.decoder.weight)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if self.disc is not None:
            self.disc.requires_grad_(True)
            with amp:
                d_loss = self.gan.discriminator_loss(
                    self.disc(real), self.disc(fake.detach()), step
                )
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
        if self.sd:
            ema_update(self.teacher, self.student, 0.996)
        self.step_count += 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="images; 2 global views each")
    p.add_argument("--out-dim", type=int, default=4096, help="DINO prototypes")
    p.add_argument("--mask-ratio", type=float, default=0.6)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = [
        Config("mim", args, None, False),
        Config("+adv fixed", args, "fixed", False),
        Config("+adv adaptive", args, "adaptive", False),
        Config("+adv every10", args, "every10", False),
        Config("+sd (adaptive)", args, "adaptive", True),
    ]
    g = torch.Generator().manual_seed(0)
    grid = (args.img // args.patch,) * 2
    masks = MaskGenerator(grid, args.mask_ratio, "random")
    n = 2 * args.batch  # two global views per image
    views = torch.rand(n, 1, args.img, args.img, generator=g).to(args.device)
    mask = masks(n, generator=g, device=args.device)

    for cfg in configs:
        for _ in range(args.warmup):
            cfg.step(views, mask)
    _sync(args.device)
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    for r in range(args.rounds):
        # rotate the order every round so that no configuration always runs first
        for cfg in configs[r % len(configs) :] + configs[: r % len(configs)]:
            _sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                cfg.step(views, mask)
            _sync(args.device)
            times[cfg.name].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(times["mim"])
    fixed = statistics.median(times["+adv fixed"])
    print(
        f"device={args.device} dtype={args.dtype} img={args.img} patch={args.patch} "
        f"dim={args.dim} depth={args.depth} batch={args.batch}x2 views out_dim={args.out_dim} "
        f"threads={torch.get_num_threads()} rounds={args.rounds} steps/round={args.steps}"
    )
    print(f"{'configuration':<16} {'ms/step':>9} {'IQR/med':>8} {'vs mim':>8} {'vs fixed λ':>11}")
    for cfg in configs:
        med = statistics.median(times[cfg.name])
        q1, _, q3 = statistics.quantiles(times[cfg.name], n=4)
        print(
            f"{cfg.name:<16} {med * 1e3:9.1f} {(q3 - q1) / med:8.1%} "
            f"{med / base:8.3f} {med / fixed:11.3f}"
        )


if __name__ == "__main__":
    main()
