"""arlkit's losses in your own training loop: MIM + speckle GAN + adaptive weight.

Trains a tiny timm Vision Transformer on synthetic speckle images with
``mim_loss``, ``SpeckleGANLoss`` and ``GradNormRatio`` — nothing else from arlkit
(no recipes, no engine, no plugins). Runs on a CPU in seconds::

    python examples/losses_in_your_own_loop.py --steps 50

The pieces:

* ``MaskGenerator`` draws which patches are hidden; masked patch embeddings are
  replaced by a learned mask token (SimMIM style) and a linear decoder predicts the
  pixels of every patch.
* ``mim_loss`` scores the masked patches only.
* The discriminator compares reconstructed masked patches with the real ones at the
  same positions (``masked_patch_pairs``); ``SpeckleGANLoss`` gives the generator
  term ``softplus(-D(x̂))`` (zero during the warm-up) and the discriminator loss.
* ``GradNormRatio`` weighs the adversarial term by
  ``λ = ||∇_w L_MIM|| / (||∇_w L_adv|| + ε)`` measured on the decoder's weight ``w``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from arlkit.balancers import GradNormRatio
from arlkit.losses import MaskGenerator, SpeckleGANLoss, masked_patch_pairs, mim_loss, patchify

IMG, PATCH = 32, 8


def speckle_images(n: int, generator: torch.Generator) -> Tensor:
    """``(n, 1, IMG, IMG)`` in [0, 1]: a smooth echogenicity map times Rayleigh speckle."""
    tissue = F.interpolate(torch.rand(n, 1, 4, 4, generator=generator), size=IMG, mode="bilinear")
    re, im = torch.randn(2, n, 1, IMG, IMG, generator=generator)
    speckle = torch.sqrt(re**2 + im**2) / math.sqrt(2)  # Rayleigh envelope, mean ≈ 0.89
    return (tissue * speckle / 2.5).clamp(0, 1)


class MaskedViT(nn.Module):
    """A timm ViT encoder with a mask token and a linear pixel decoder."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=IMG,
            patch_size=PATCH,
            in_chans=1,
            num_classes=0,
            embed_dim=dim,
            depth=2,
            num_heads=2,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder = nn.Linear(dim, PATCH * PATCH)  # its weight is the balancer's w

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        """``(B, 1, H, W)``, mask ``(B, N)`` -> predicted patches ``(B, N, P·P)``."""
        x = self.vit.patch_embed(images)  # (B, N, C)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        x = self.vit._pos_embed(x)  # (B, 1+N, C): class token + positions
        x = self.vit.norm(self.vit.blocks(self.vit.norm_pre(x)))
        return self.decoder(x[:, self.vit.num_prefix_tokens :])


def discriminator() -> nn.Module:
    """A small conv net: ``(M, 1, P, P)`` patches -> ``(M,)`` logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
        nn.Flatten(0),
    )


def main(steps: int = 50, batch: int = 16, gan_start: int = 5, seed: int = 0) -> list[dict]:
    """Train for ``steps`` steps; returns the logged values of every step."""
    torch.manual_seed(seed)
    data_rng = torch.Generator().manual_seed(seed)
    model, disc = MaskedViT(), discriminator()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
    masks = MaskGenerator((IMG // PATCH, IMG // PATCH), mask_ratio=0.5, mode="random")
    gan = SpeckleGANLoss(start_step=gan_start)
    balancer = GradNormRatio(reference="mim", adaptive="speckle_gan", max_weight=10.0)
    history = []
    for step in range(steps):
        images = speckle_images(batch, data_rng)
        mask = masks(batch, generator=data_rng)
        target = patchify(images, PATCH)  # (B, N, P·P)

        # reconstruction step: L = L_MIM + λ·L_adv, D frozen
        pred = model(images, mask)
        l_mim = mim_loss(pred, target, mask)
        fake, real = masked_patch_pairs(pred, target, mask, PATCH)  # (M, 1, P, P) each
        disc.requires_grad_(False)
        l_adv = gan.generator_loss(disc(fake), step)
        total, weights = balancer({"mim": l_mim, "speckle_gan": l_adv}, model.decoder.weight)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

        # discriminator step on detached reconstructions (skipped during the warm-up)
        disc.requires_grad_(True)
        l_disc = gan.discriminator_loss(disc(real), disc(fake.detach()), step)
        if l_disc.requires_grad:
            d_opt.zero_grad(set_to_none=True)
            l_disc.backward()
            d_opt.step()

        history.append(
            {
                "step": step,
                "mim": l_mim.item(),
                "adv": l_adv.item(),
                "disc": l_disc.item(),
                "lambda": weights["lambda"],
                "total": total.item(),
            }
        )
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gan-start", type=int, default=5)
    args = parser.parse_args()
    for row in main(args.steps, args.batch, args.gan_start):
        if row["step"] % 10 == 0 or row["step"] == args.steps - 1:
            print(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
