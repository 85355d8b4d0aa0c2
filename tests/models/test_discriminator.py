"""PatchDiscriminator: shapes, spectral norm, input gradients, errors."""

from __future__ import annotations

import pytest
import torch

from arlkit.errors import ConfigError
from arlkit.models.discriminator import PatchDiscriminator


@pytest.mark.parametrize("shape", [(7, 1, 16, 16), (2, 1, 64, 48), (3, 1, 3, 5)])
def test_one_logit_per_patch_or_image(shape: tuple[int, ...]) -> None:
    disc = PatchDiscriminator(in_dim=1, base_channels=8)
    assert disc(torch.randn(shape)).shape == (shape[0],)


def test_multichannel_and_channel_check() -> None:
    disc = PatchDiscriminator(in_dim=3, base_channels=4, num_layers=2)
    assert disc(torch.randn(2, 3, 8, 8)).shape == (2,)
    with pytest.raises(ConfigError, match=r"\(M, 3, H, W\)"):
        disc(torch.randn(2, 1, 8, 8))


def test_logits_depend_on_each_sample_only() -> None:
    disc = PatchDiscriminator(in_dim=1, base_channels=4).eval()
    x = torch.randn(4, 1, 8, 8)
    full = disc(x)
    torch.testing.assert_close(disc(x[2:3]), full[2:3])


def test_spectral_norm_bounds_the_weights() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_dim=1, base_channels=8, num_layers=2, spectral_norm=True).train()
    with torch.no_grad():
        for _ in range(100):  # power iterations run in training-mode forward passes
            disc(torch.randn(2, 1, 8, 8))
    disc.eval()
    for conv in disc.convs:
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    plain = PatchDiscriminator(in_dim=1, base_channels=8, num_layers=2, spectral_norm=False)
    assert not hasattr(plain.convs[0], "parametrizations")


def test_gradient_reaches_inputs_for_r1() -> None:
    disc = PatchDiscriminator(in_dim=1, base_channels=4)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    disc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="positive"):
        PatchDiscriminator(in_dim=1, num_layers=0)
