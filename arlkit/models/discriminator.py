"""A small convolutional discriminator for the speckle-preserving GAN.

It scores single patches ``(M, C, P, P)`` (reconstructed vs real, at the masked
positions) or whole images: strided 3×3 convolutions with LeakyReLU halve the
resolution while doubling the width, then global average pooling and a linear layer
give one logit per input. No batch norm, so that the R1 penalty and mixed
real/fake batches behave; spectral normalisation is optional.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.errors import ConfigError

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Conv net ``(M, C, H, W) -> (M,)`` logits (real = positive).

    Args:
        in_dim: number of input *channels* ``C`` (named ``in_dim`` because the heads
            registry injects it; 1 for B-mode ultrasound).
        base_channels: width of the first convolution; doubled at every layer.
        num_layers: strided convolutions (each halves H and W, never below 1 pixel).
        max_channels: cap on the width.
        spectral_norm: wrap every conv/linear layer in spectral normalisation.
        negative_slope: LeakyReLU slope.

    Raises:
        ConfigError: non-positive sizes.
    """

    def __init__(
        self,
        in_dim: int = 1,
        base_channels: int = 64,
        num_layers: int = 3,
        max_channels: int = 512,
        spectral_norm: bool = False,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if min(in_dim, base_channels, num_layers, max_channels) <= 0:
            raise ConfigError(
                "PatchDiscriminator: in_dim, base_channels, num_layers and max_channels "
                f"must be positive, got {in_dim}, {base_channels}, {num_layers}, {max_channels}"
            )
        self.in_dim = in_dim
        self.negative_slope = negative_slope
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        convs = []
        width_in = in_dim
        for i in range(num_layers):
            width_out = min(base_channels * 2**i, max_channels)
            # the first layer keeps the resolution: patches are only 16 pixels wide
            stride = 1 if i == 0 else 2
            convs.append(wrap(nn.Conv2d(width_in, width_out, 3, stride=stride, padding=1)))
            width_in = width_out
        self.convs = nn.ModuleList(convs)
        self.fc = wrap(nn.Linear(width_in, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Score inputs.

        Args:
            x: ``(M, C, H, W)`` patches or images, ``C == in_dim``.

        Returns:
            ``(M,)`` logits.

        Raises:
            ConfigError: wrong rank or channel count.
        """
        if x.ndim != 4 or x.shape[1] != self.in_dim:
            raise ConfigError(
                f"PatchDiscriminator: expected (M, {self.in_dim}, H, W), got {tuple(x.shape)}"
            )
        for conv in self.convs:
            x = F.leaky_relu(conv(x), self.negative_slope)
        x = x.mean(dim=(2, 3))  # (M, width)
        return self.fc(x).squeeze(-1)  # (M,)
