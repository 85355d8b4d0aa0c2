"""Speckle-preserving adversarial loss: a GAN term that keeps reconstructions sharp.

An L2 reconstruction loss blurs ultrasound speckle. A discriminator ``D`` learns to
tell reconstructed masked patches from the real patches at the same positions, and
the reconstruction decoder is trained to fool it:

* generator: ``L_adv^(G) = -E[log D(x̂)] = E[softplus(-D_logit(x̂))]`` (stable for
  any logit, where ``-log(sigmoid(l))`` overflows to inf for very negative ``l``);
* discriminator (its own optimizer step, with the fakes detached): non-saturating
  BCE ``½(E[softplus(-D(x))] + E[softplus(D(x̂))])`` or hinge
  ``½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])``;
* optional R1 penalty ``γ/2 · E[||∇_x D(x)||²]`` on real inputs;
* a warm-up: before ``start_step`` both terms are an exact zero *without* gradient,
  so a balancer can see that the adversarial term is off (``loss.requires_grad``).

Example::

    gan = SpeckleGANLoss(start_step=1000)
    fake, real = masked_patch_pairs(pred, target, mask, patch_size=16)  # (M, C, P, P)
    g_loss = gan.generator_loss(disc(fake), step)
    d_loss = gan.discriminator_loss(disc(real), disc(fake.detach()), step)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlkit.errors import ConfigError
from arlkit.losses.masking import as_bool_mask
from arlkit.losses.mim import normalize_patches

__all__ = [
    "SpeckleGANLoss",
    "discriminator_bce_loss",
    "discriminator_hinge_loss",
    "generator_adv_loss",
    "masked_patch_pairs",
    "r1_penalty",
]

_DISC_LOSSES = ("bce", "hinge")


def generator_adv_loss(fake_logits: Tensor) -> Tensor:
    """``-E[log D(x̂)]`` written as ``E[softplus(-logits)]``.

    Args:
        fake_logits: discriminator logits of reconstructions, any shape.

    Returns:
        Scalar float32 tensor.
    """
    return F.softplus(-fake_logits.float()).mean()


def discriminator_bce_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Non-saturating BCE: ``½(E[softplus(-real)] + E[softplus(fake)])``.

    Args:
        real_logits: logits of real patches, any shape.
        fake_logits: logits of (detached) reconstructions, any shape.

    Returns:
        Scalar float32 tensor.
    """
    return 0.5 * (F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean())


def discriminator_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss: ``½(E[relu(1 - real)] + E[relu(1 + fake)])``.

    Args:
        real_logits: logits of real patches, any shape.
        fake_logits: logits of (detached) reconstructions, any shape.

    Returns:
        Scalar float32 tensor.
    """
    return 0.5 * (
        F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()
    )


def r1_penalty(real_logits: Tensor, real_inputs: Tensor) -> Tensor:
    """R1 gradient penalty ``E[||∇_x D(x)||²]`` on real inputs (Mescheder et al. 2018).

    Args:
        real_logits: ``(M,)`` logits computed from ``real_inputs``.
        real_inputs: ``(M, ...)`` real patches; must have ``requires_grad=True``
            *before* the discriminator ran on them.

    Returns:
        Scalar float32 tensor, differentiable with respect to the discriminator.

    Raises:
        ConfigError: ``real_inputs`` does not require grad.
    """
    if not real_inputs.requires_grad:
        raise ConfigError(
            "r1_penalty: real_inputs does not require grad; call "
            "real_inputs.requires_grad_(True) before running the discriminator on it"
        )
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1).mean()


def masked_patch_pairs(
    pred: Tensor, target: Tensor, mask: Tensor, patch_size: int, norm_pix: bool = False
) -> tuple[Tensor, Tensor]:
    """Reconstructed and real masked patches as small images for the discriminator.

    Args:
        pred: predicted patches ``(B, N, P·P·C)`` (:func:`~arlkit.losses.mim.patchify` order).
        target: real patches ``(B, N, P·P·C)``, raw pixels.
        mask: ``(B, N)`` bool, True = masked (or 0/1, 1 = masked).
        patch_size: ``P``.
        norm_pix: the predictions are per-patch standardised (MIM with ``norm_pix``):
            standardise the real patches the same way, so that ``D`` compares like
            with like instead of telling the two apart by their scale.

    Returns:
        ``(fake, real)``, each ``(M, C, P, P)`` with ``M`` = number of masked patches,
        in the same order, so ``fake[i]`` and ``real[i]`` share a position.

    Raises:
        ConfigError: mismatched shapes.
    """
    mask = as_bool_mask(mask, "masked_patch_pairs")
    if pred.shape != target.shape or pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ConfigError(
            f"masked_patch_pairs: expected pred and target (B, N, P*P*C) and mask (B, N), got "
            f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
        )
    d = pred.shape[-1]
    channels = d // (patch_size * patch_size)
    if channels * patch_size * patch_size != d:
        raise ConfigError(f"masked_patch_pairs: patch dimension {d} is not C·{patch_size}²")

    if norm_pix:
        target = normalize_patches(target)

    def to_images(x: Tensor) -> Tensor:
        x = x[mask]  # (M, P*P*C)
        x = x.reshape(-1, patch_size, patch_size, channels)  # (M, P, P, C)
        return x.permute(0, 3, 1, 2)  # (M, C, P, P)

    return to_images(pred), to_images(target)


class SpeckleGANLoss(nn.Module):
    """Generator and discriminator losses of the speckle-preserving GAN, with warm-up.

    Args:
        start_step: steps before the adversarial terms switch on; until then both
            losses are an exact zero without gradient.
        disc_loss: discriminator loss, ``"bce"`` (non-saturating) or ``"hinge"``; the
            generator term is always ``softplus(-logits)``, the paper's ``-log D``.
        r1_gamma: weight ``γ`` of the R1 penalty ``γ/2 · E||∇D(x)||²`` added by
            :meth:`discriminator_loss` when ``real_inputs`` are given; 0 disables it.

    Raises:
        ConfigError: bad option values.
    """

    def __init__(
        self,
        start_step: int = 0,
        disc_loss: Literal["bce", "hinge"] = "bce",
        r1_gamma: float = 0.0,
    ) -> None:
        super().__init__()
        if disc_loss not in _DISC_LOSSES:
            raise ConfigError(
                f"SpeckleGANLoss: unknown disc_loss {disc_loss!r}; choose one of {list(_DISC_LOSSES)}"
            )
        if start_step < 0:
            raise ConfigError(f"SpeckleGANLoss: start_step must be >= 0, got {start_step}")
        if r1_gamma < 0:
            raise ConfigError(f"SpeckleGANLoss: r1_gamma must be >= 0, got {r1_gamma}")
        self.start_step = start_step
        self.disc_loss = disc_loss
        self.r1_gamma = r1_gamma

    def active(self, step: int) -> bool:
        """Whether the adversarial terms are on at ``step``."""
        return step >= self.start_step

    @staticmethod
    def _off(like: Tensor) -> Tensor:
        return torch.zeros((), device=like.device, dtype=torch.float32)

    def generator_loss(self, fake_logits: Tensor, step: int) -> Tensor:
        """``L_adv^(G) = E[softplus(-D(x̂))]``, or an exact 0 (no grad) before ``start_step``.

        Args:
            fake_logits: ``(M,)`` logits of the reconstructions (not detached).
            step: current optimizer step.

        Returns:
            Scalar float32 tensor.
        """
        if not self.active(step):
            return self._off(fake_logits)
        return generator_adv_loss(fake_logits)

    def discriminator_loss(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        step: int,
        real_inputs: Tensor | None = None,
    ) -> Tensor:
        """Discriminator loss (+ R1 when ``r1_gamma > 0`` and ``real_inputs`` given).

        Args:
            real_logits: ``(M,)`` logits of real patches.
            fake_logits: ``(M,)`` logits of *detached* reconstructions.
            step: current optimizer step.
            real_inputs: ``(M, C, P, P)`` real patches with ``requires_grad`` set
                before ``D`` ran, for the R1 penalty.

        Returns:
            Scalar float32 tensor; an exact 0 without gradient before ``start_step``.
        """
        if not self.active(step):
            return self._off(real_logits)
        if self.disc_loss == "bce":
            loss = discriminator_bce_loss(real_logits, fake_logits)
        else:
            loss = discriminator_hinge_loss(real_logits, fake_logits)
        if self.r1_gamma > 0 and real_inputs is not None:
            loss = loss + 0.5 * self.r1_gamma * r1_penalty(real_logits, real_inputs)
        return loss

    def r1_penalty(self, real_logits: Tensor, real_inputs: Tensor) -> Tensor:
        """See :func:`r1_penalty` (unweighted)."""
        return r1_penalty(real_logits, real_inputs)

    def forward(self, fake_logits: Tensor, step: int) -> Tensor:
        """Same as :meth:`generator_loss` (the term that enters the total loss)."""
        return self.generator_loss(fake_logits, step)

    def extra_repr(self) -> str:
        return (
            f"start_step={self.start_step}, disc_loss={self.disc_loss!r}, r1_gamma={self.r1_gamma}"
        )
