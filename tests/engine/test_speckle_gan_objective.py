"""The engine's ``speckle_gan`` objective uses the losses as they are documented: the R1
penalty weighted by ``γ/2`` and, after ``mim`` with ``norm_pix``, real patches standardised
like the predictions they are compared with."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.engine.builtin_objectives import MIMObjective, SpeckleGANObjective
from arlkit.engine.objectives import ObjectiveContext
from arlkit.engine.step import Step
from arlkit.losses import mim_loss, patchify

P, GRID, EMBED = 4, (2, 2), 8


def _context() -> ObjectiveContext:
    return ObjectiveContext(
        embed_dim=EMBED, patch_size=P, in_chans=1, num_prefix_tokens=1, sparse_encoder=False,
        grid=GRID, n_global=1, n_local=0, total_steps=10, steps_per_epoch=10,
        objectives=("mim", "speckle_gan"),
    )  # fmt: skip


def _step(mask: torch.Tensor, views: torch.Tensor) -> Step:
    return Step(0, 0, views, None, torch.zeros(views.shape[0], dtype=torch.long), mask, GRID, 1, 0)


def test_discriminator_step_weights_r1_by_half_gamma() -> None:
    """``loss_disc = ½(E softplus(-D(x)) + E softplus(D(x̂))) + γ/2 · E||∇_x D(x)||²``
    (StyleGAN's R1 weighting, the one :class:`SpeckleGANLoss` documents)."""
    gamma = 10.0
    torch.manual_seed(0)
    obj = SpeckleGANObjective(_context(), r1_gamma=gamma, disc_width=4, spectral_norm=False)
    disc = obj.aux["discriminator"]
    with torch.no_grad():  # a steeper D, so that the R1 term is far from negligible
        for param in disc.parameters():
            param.mul_(3.0)
    pred, target = torch.randn(2, 4, P * P), torch.randn(2, 4, P * P)
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    step = _step(mask, torch.zeros(2, 1, 8, 8))
    step.cache["mim"] = (pred, target)

    real = target[mask].reshape(-1, 1, P, P).requires_grad_(True)
    fake = pred[mask].reshape(-1, 1, P, P)
    real_logits, fake_logits = disc(real), disc(fake)
    (grad,) = torch.autograd.grad(real_logits.sum(), real)
    bce = 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    r1 = grad.square().flatten(1).sum(1).mean()
    assert r1 > 0.1 * bce  # the weighting matters for this D
    expected = float((bce + gamma / 2 * r1).detach())

    logs = obj.auxiliary_step(step, contextlib.nullcontext())
    assert abs(logs["loss_disc"] - expected) < 1e-4 * max(1.0, abs(expected))


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(P * P, EMBED)

    def forward_features(self, x, organ, mask=None):  # (B, 1+N, C)
        tokens = self.proj(patchify(x, P))
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def test_discriminator_sees_standardised_real_patches_after_norm_pix_mim() -> None:
    """With ``norm_pix`` the decoder predicts standardised patches; ``D`` must compare them
    with standardised real patches (MAE's per-patch ``(x - mean) / sqrt(var + 1e-6)``),
    not raw ones it could tell apart by their grey level alone."""
    ctx = _context()
    mim = MIMObjective(ctx, mask_ratio=0.5, mask_mode="random", norm_pix=True)
    gan = SpeckleGANObjective(ctx, disc_width=4, spectral_norm=False)
    mim.name, gan.name = "mim", "speckle_gan"
    student = nn.Module()
    student.backbone = _Backbone()
    student.heads = nn.ModuleDict({"mim": mim.build_heads()})
    g = torch.Generator().manual_seed(0)
    views = 3.0 + 2.0 * torch.rand(2, 1, 8, 8, generator=g)  # far from zero mean, unit variance
    mask = mim.make_mask(2, g)
    step = _step(mask, views)
    loss = mim.loss(step, student)
    gan.loss(step, student)
    pred, _ = step.cache["mim"]
    torch.testing.assert_close(loss, mim_loss(pred, patchify(views, P), mask, norm_pix=True))

    _, real = gan._pairs(step)  # (M, 1, P, P)
    raw = patchify(views, P)[mask]  # (M, P·P)
    mean, var = raw.mean(-1, keepdim=True), raw.var(-1, keepdim=True)
    torch.testing.assert_close(real.reshape(raw.shape), (raw - mean) / (var + 1e-6).sqrt())
