"""The triple objective of ARL as stand-alone losses: MIM, speckle GAN, self-distillation
(plus, beyond the paper, iBOT's masked patch distillation and DINOv2's KoLeo regulariser).

The losses use only torch (and numpy for block masks) and take plain tensors, so they
drop into any PyTorch training loop (importing them imports ``arlkit``, which registers
its models with timm); masks are bool or 0/1 (1 = masked)::

    from arlkit.losses import MaskGenerator, SpeckleGANLoss, mim_loss
"""

from __future__ import annotations

from arlkit.losses.adversarial import (
    SpeckleGANLoss,
    discriminator_bce_loss,
    discriminator_hinge_loss,
    generator_adv_loss,
    masked_patch_pairs,
    r1_penalty,
)
from arlkit.losses.distill import PatchDistillationLoss, SelfDistillationLoss, teacher_temperature
from arlkit.losses.koleo import KoLeoLoss, koleo_loss
from arlkit.losses.masking import MaskGenerator, as_bool_mask
from arlkit.losses.mim import MIMLoss, mim_loss, normalize_patches, patchify, unpatchify

__all__ = [
    "KoLeoLoss",
    "MIMLoss",
    "MaskGenerator",
    "PatchDistillationLoss",
    "SelfDistillationLoss",
    "SpeckleGANLoss",
    "as_bool_mask",
    "discriminator_bce_loss",
    "discriminator_hinge_loss",
    "generator_adv_loss",
    "koleo_loss",
    "masked_patch_pairs",
    "mim_loss",
    "normalize_patches",
    "patchify",
    "r1_penalty",
    "teacher_temperature",
    "unpatchify",
]
