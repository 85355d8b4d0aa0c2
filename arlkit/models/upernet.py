"""UPerNet decoder for plain ViT backbones, through a simple feature pyramid.

A ViT gives every intermediate level at one stride (the patch size). Following BEiT/MAE
segmentation (and ViTDet's simple pyramid), four intermediate levels are resampled to
strides ``p/4, p/2, p, 2p`` — two transposed convolutions, one, none, a max-pool — and
fed to UPerNet (Xiao et al., 2018): a pyramid pooling module on the coarsest level, a
top-down FPN, and the fusion of all levels at the finest. Logits are upsampled
bilinearly to the input's spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ConfigError

__all__ = ["ConvBNReLU", "SimpleFeaturePyramid", "UPerHead", "UPerNet"]


class ConvBNReLU(nn.Sequential):
    """``Conv2d(k, padding k//2, no bias) → BatchNorm2d → ReLU``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SimpleFeaturePyramid(nn.Module):
    """Four same-stride maps → strides ×1/4, ×1/2, ×1, ×2 of the input stride.

    Args:
        in_dim: channels of every input level (the backbone width).
        scales: resampling factor per level; each is 4, 2, 1 or 0.5.
    """

    def __init__(self, in_dim: int, scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        stages = []
        for s in self.scales:
            if s == 4.0:
                stage = nn.Sequential(
                    nn.ConvTranspose2d(in_dim, in_dim, 2, stride=2),
                    nn.BatchNorm2d(in_dim),
                    nn.GELU(),
                    nn.ConvTranspose2d(in_dim, in_dim, 2, stride=2),
                )
            elif s == 2.0:
                stage = nn.ConvTranspose2d(in_dim, in_dim, 2, stride=2)
            elif s == 1.0:
                stage = nn.Identity()
            elif s == 0.5:
                stage = nn.MaxPool2d(2, ceil_mode=True)
            else:
                raise ConfigError(f"upernet: pyramid scales must be 4, 2, 1 or 0.5, got {s}")
            stages.append(stage)
        self.stages = nn.ModuleList(stages)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[(B, C, h, w)] × L`` → ``[(B, C, h·s_i, w·s_i)]`` (ceil for 0.5)."""
        if len(features) != len(self.stages):
            raise ConfigError(f"upernet: expected {len(self.stages)} levels, got {len(features)}")
        return [stage(f) for stage, f in zip(self.stages, features)]


class UPerHead(nn.Module):
    """UPerNet's decoder: PPM on the last level, FPN top-down, fuse, classify.

    Args:
        in_channels: channels per level, finest first.
        channels: width of the decoder.
        num_classes: output classes.
        pool_scales: bins of the pyramid pooling module.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 128,
        num_classes: int = 2,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(ConvBNReLU(in_channels[-1], channels, 1) for _ in pool_scales)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.ppm):
            pooled = conv(F.adaptive_avg_pool2d(x, scale))  # (B, ch, s, s)
            outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Levels ``[(B, C_i, h_i, w_i)]`` finest first → logits ``(B, K, h_0, w_0)``."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features[:-1])]
        laterals.append(self._psp(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the upsampled coarser level
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                            for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))


class UPerNet(nn.Module):
    """Simple feature pyramid + UPerNet head for a ViT's four intermediate levels.

    Args:
        in_dim: backbone width (channels of each intermediate level).
        num_classes: segmentation classes (background included).
        channels: decoder width.
        scales: pyramid resampling per level (see :class:`SimpleFeaturePyramid`).
        pool_scales: pyramid pooling bins.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int = 2,
        channels: int = 128,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pyramid = SimpleFeaturePyramid(in_dim, scales)
        self.head = UPerHead([in_dim] * len(self.pyramid.scales), channels, num_classes,
                             pool_scales, dropout)

    def forward(
        self, features: Sequence[torch.Tensor], out_size: tuple[int, int] | torch.Size
    ) -> torch.Tensor:
        """Intermediate levels ``[(B, C, h, w)] × 4`` → logits ``(B, K, *out_size)``."""
        logits = self.head(self.pyramid(features))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
