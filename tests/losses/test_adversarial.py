"""Speckle GAN losses: stable formulas, warm-up, R1, patch pairing, a trainable discriminator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.losses import (
    SpeckleGANLoss,
    discriminator_bce_loss,
    discriminator_hinge_loss,
    generator_adv_loss,
    masked_patch_pairs,
    patchify,
    r1_penalty,
)
from arlkit.models.discriminator import PatchDiscriminator


def test_softplus_equals_minus_log_sigmoid_where_finite() -> None:
    logits = torch.linspace(-30, 30, 241, dtype=torch.float64)
    reference = -torch.log(torch.sigmoid(logits))
    ours = F.softplus(-logits)
    finite = torch.isfinite(reference)
    assert finite.all()
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)
    for i in range(0, 241, 40):
        assert generator_adv_loss(logits[i : i + 1]).item() == pytest.approx(
            reference[i].item(), rel=1e-6, abs=1e-7
        )


def test_generator_loss_finite_at_extreme_logits() -> None:
    naive = -torch.log(torch.sigmoid(torch.tensor([-1e4])))
    assert torch.isinf(naive).all()  # why the softplus form is needed
    assert generator_adv_loss(torch.tensor([-1e4])).item() == pytest.approx(1e4)
    assert generator_adv_loss(torch.tensor([1e4])).item() == 0.0
    d = discriminator_bce_loss(torch.tensor([-1e4, 1e4]), torch.tensor([1e4, -1e4]))
    assert math.isfinite(d.item()) and d.item() == pytest.approx(0.5 * (1e4 / 2 + 1e4 / 2))


def test_discriminator_losses_match_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, generator=g) * 3, torch.randn(7, generator=g) * 3
    bce = 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones(7))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros(7))
    )
    torch.testing.assert_close(discriminator_bce_loss(real, fake), bce)
    hinge = 0.5 * (
        sum(max(0.0, 1 - r) for r in real.tolist()) / 7
        + sum(max(0.0, 1 + f) for f in fake.tolist()) / 7
    )
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx(hinge, rel=1e-6)
    loss = SpeckleGANLoss(disc_loss="hinge")
    torch.testing.assert_close(
        loss.discriminator_loss(real, fake, 0), discriminator_hinge_loss(real, fake)
    )


def test_warmup_gives_exact_zero_without_gradient() -> None:
    loss = SpeckleGANLoss(start_step=10)
    logits = torch.randn(5, requires_grad=True)
    for step in (0, 9):
        g = loss.generator_loss(logits, step)
        d = loss.discriminator_loss(logits, logits, step)
        assert g.item() == 0.0 and d.item() == 0.0
        assert not g.requires_grad and not d.requires_grad
        assert not loss.active(step)
    g = loss.generator_loss(logits, 10)
    assert g.requires_grad
    torch.testing.assert_close(g, F.softplus(-logits).mean())
    torch.testing.assert_close(loss(logits, 10), g)


def test_r1_penalty_of_a_linear_discriminator() -> None:
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.randn(6, 4, requires_grad=True)
    logits = x @ a  # ∇_x D = a for every sample
    torch.testing.assert_close(r1_penalty(logits, x), a.square().sum())
    gan = SpeckleGANLoss(r1_gamma=2.0)
    fake = torch.zeros(6)
    expected = discriminator_bce_loss(logits, fake) + 0.5 * 2.0 * a.square().sum()
    torch.testing.assert_close(gan.discriminator_loss(logits, fake, 0, real_inputs=x), expected)
    with pytest.raises(ConfigError, match="requires_grad_"):
        r1_penalty(torch.randn(6), torch.randn(6, 4))


def test_masked_patch_pairs_are_the_real_patches_at_masked_positions() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 8, 8, generator=g)
    target = patchify(images, 4)  # (2, 4, 48)
    pred = target + 1.0
    mask = torch.tensor([[False, True, False, True], [True, False, False, False]])
    fake, real = masked_patch_pairs(pred, target, mask, patch_size=4)
    assert real.shape == (3, 3, 4, 4)
    torch.testing.assert_close(real[0], images[0, :, 0:4, 4:8])  # image 0, patch 1
    torch.testing.assert_close(real[1], images[0, :, 4:8, 4:8])  # image 0, patch 3
    torch.testing.assert_close(real[2], images[1, :, 0:4, 0:4])  # image 1, patch 0
    torch.testing.assert_close(fake, real + 1.0)
    _, real_normed = masked_patch_pairs(pred, target, mask, patch_size=4, norm_pix=True)
    flat = real_normed.permute(0, 2, 3, 1).reshape(3, -1)  # back to (M, P*P*C) order
    torch.testing.assert_close(flat.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(-1), torch.ones(3), atol=1e-4, rtol=0)


def test_discriminator_loss_decreases_on_separable_data() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_dim=1, base_channels=8, num_layers=2)
    opt = torch.optim.Adam(disc.parameters(), lr=5e-3)
    gan = SpeckleGANLoss()
    g = torch.Generator().manual_seed(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        speckle = torch.randn(32, 1, 8, 8, generator=g).abs()  # "real": grainy
        smooth = speckle.mean(dim=(2, 3), keepdim=True).expand_as(speckle)  # "fake": blurred
        return speckle, smooth.contiguous()

    losses = []
    for _ in range(60):
        real, fake = batch()
        loss = gan.discriminator_loss(disc(real), disc(fake), step=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=0.1)  # untrained: chance level
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0]


def test_bad_options_raise() -> None:
    with pytest.raises(ConfigError, match=r"unknown disc_loss 'wgan'.*'bce', 'hinge'"):
        SpeckleGANLoss(disc_loss="wgan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="start_step"):
        SpeckleGANLoss(start_step=-1)
