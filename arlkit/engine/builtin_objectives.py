"""The paper's three objectives as engine objectives: ``mim``, ``speckle_gan``, ``self_distillation``;
and, beyond the paper, iBOT's masked patch distillation (``patch_distillation``) and DINOv2's
KoLeo regulariser (``koleo``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from arlkit.engine.objectives import Objective, ObjectiveContext
from arlkit.engine.optim import load_optimizer_state
from arlkit.engine.step import Step
from arlkit.errors import ConfigError
from arlkit.losses import (
    KoLeoLoss,
    MaskGenerator,
    PatchDistillationLoss,
    SelfDistillationLoss,
    SpeckleGANLoss,
    mim_loss,
    normalize_patches,
    patchify,
)
from arlkit.losses.adversarial import masked_patch_pairs
from arlkit.models.decoders import MIMDecoder

__all__ = [
    "KoLeoObjective",
    "MIMObjective",
    "PatchDistillationObjective",
    "SelfDistillationObjective",
    "SpeckleGANObjective",
]


class MIMObjective(Objective):
    """Masked image modelling: MSE on the masked patches of the global views.

    Args:
        context: injected by the engine.
        mask_ratio: fraction of patches masked per view.
        mask_mode: ``block`` (BEiT/iBOT block-wise) or ``random`` (MAE).
        norm_pix: per-patch normalised targets (MAE's ``norm_pix_loss``).
        loss: ``l2`` (the paper's) or ``l1``.
        decoder_depth: 0 = linear head (SimMIM); >0 = light transformer decoder (MAE).
        decoder_dim: width of the transformer decoder.
        decoder_heads: heads of the transformer decoder.
        target: ``view`` reconstructs the (intensity-augmented) input view, as SimMIM and
            MAE do; ``clean`` reconstructs the same crop before intensity augmentation
            (needs ``data.views.params.clean_global: true``), so the features need not
            carry the view's gain and contrast to predict masked grey levels.
        min_block_patches: smallest block of ``block`` masking, in patches. 4 is the
            default of BEiT's and DINOv2's generators; BEiT's pretraining scripts pass 16
            (on a 14×14 grid), which gives fewer, larger masked regions.
    """

    def __init__(
        self,
        context: ObjectiveContext,
        mask_ratio: float = 0.6,
        mask_mode: Literal["random", "block"] = "block",
        norm_pix: bool = False,
        loss: Literal["l2", "l1"] = "l2",
        decoder_depth: int = 0,
        decoder_dim: int = 256,
        decoder_heads: int = 8,
        target: Literal["view", "clean"] = "view",
        min_block_patches: int = 4,
    ) -> None:
        super().__init__(context)
        if context.sparse_encoder and decoder_depth <= 0:
            # checked here, not only in MIMDecoder, so the error names the recipe's path
            raise ConfigError(
                "the sparse encoder (model.backbone.params.mask_mode: drop) needs a transformer "
                "decoder to fill the dropped positions from the visible ones: a linear head sees "
                "only the mask token there and passes the encoder no gradient; set "
                "decoder_depth > 0 (MAE: 8)"
            )
        self.generator = MaskGenerator(context.grid, mask_ratio, mask_mode,
                                       min_block_patches=min_block_patches)
        if target == "clean" and not context.clean_global:
            raise ConfigError(
                "target: clean reconstructs the un-augmented crops, which these views do not "
                "give; set data.views.params.clean_global: true"
            )
        self.norm_pix, self.loss_kind, self.target = norm_pix, loss, target
        self.decoder_args = dict(
            in_dim=context.embed_dim,
            patch_size=context.patch_size,
            in_chans=context.in_chans,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_prefix_tokens=context.num_prefix_tokens,
            sparse=context.sparse_encoder,
        )

    def build_heads(self) -> nn.ModuleDict:
        return nn.ModuleDict({"decoder": MIMDecoder(**self.decoder_args)})

    def make_mask(self, batch_rows: int, generator: torch.Generator) -> Tensor:
        return self.generator(batch_rows, generator=generator)

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        if step.mask is None:
            raise ConfigError("mim: the engine produced no mask")
        tokens = step.student_global(student)
        pred = student.heads[self.name]["decoder"](tokens, step.grid, step.mask)  # (R, N, P·P·C)
        image = step.global_views
        if self.target == "clean":
            if step.global_clean is None:  # checked at build time; a custom loop may forget
                raise ConfigError(f"{self.name}: target: clean but the step has no global_clean")
            image = step.global_clean
        target = patchify(image, self.context.patch_size).float()  # (R, N, P·P·C)
        if self.norm_pix:
            target = normalize_patches(target)
        # the pair the loss compares: speckle_gan shows D real patches on the scale of pred
        step.cache["mim"] = (pred, target)
        return mim_loss(pred.float(), target, step.mask, loss=self.loss_kind)

    def balance_parameter(self, student: nn.Module) -> Tensor:
        return student.heads[self.name]["decoder"].last_layer.weight


class SpeckleGANObjective(Objective):
    """Adversarial term ``-E[log D(x̂)]`` on reconstructed masked patches; trains ``D`` too.

    Args:
        context: injected by the engine.
        start_step: the adversarial terms are zero before this step (warm-up).
        disc_loss: ``bce`` (non-saturating) or ``hinge``.
        r1_gamma: ``γ`` of the R1 penalty ``γ/2 · E||∇D(x)||²`` on real patches (0 = off).
        disc_width: channels of the discriminator's first layer.
        spectral_norm: spectral normalisation in the discriminator.
        max_patches: masked patches per step shown to ``D`` (a random subset, for speed).
        lr: discriminator learning rate (Adam, betas 0.5/0.9).
    """

    requires = ("mim",)

    def __init__(
        self,
        context: ObjectiveContext,
        start_step: int = 0,
        disc_loss: Literal["bce", "hinge"] = "bce",
        r1_gamma: float = 0.0,
        disc_width: int = 64,
        spectral_norm: bool = True,
        max_patches: int = 256,
        lr: float = 1e-4,
    ) -> None:
        super().__init__(context)
        from arlkit.models.discriminator import PatchDiscriminator

        if not 0 < lr < float("inf"):  # else torch's Adam raises a bare ValueError
            raise ConfigError(f"lr must be a positive number, got {lr}; the speckle_gan default "
                              "is 1e-4")
        self.criterion = SpeckleGANLoss(start_step, disc_loss, r1_gamma)
        self.aux["discriminator"] = PatchDiscriminator(
            in_dim=context.in_chans, base_channels=disc_width, spectral_norm=spectral_norm
        )
        self.max_patches = max_patches
        self._micro_batches: int | None = None  # counted while the engine accumulates
        self.optimizer = torch.optim.Adam(
            self.aux["discriminator"].parameters(), lr=lr, betas=(0.5, 0.9)
        )

    def _pairs(self, step: Step) -> tuple[Tensor, Tensor]:
        pred, target = step.cache["mim"]
        fake, real = masked_patch_pairs(pred, target, step.mask, self.context.patch_size)
        if fake.shape[0] > self.max_patches:
            # a fixed function of the step, so resumed and distributed runs pick the same
            g = torch.Generator().manual_seed(1_000_003 * step.index + 17)
            keep = torch.randperm(fake.shape[0], generator=g)[: self.max_patches].to(fake.device)
            fake, real = fake[keep], real[keep]
        return fake, real

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        if not self.criterion.active(step.index):
            return step.global_views.new_zeros(()).float()
        fake, _ = self._pairs(step)
        step.cache["speckle_gan"] = fake
        disc = self.aux["discriminator"]
        disc.requires_grad_(False)  # the generator step must not touch D's gradients
        try:
            logits = disc(fake)
        finally:
            disc.requires_grad_(True)
        return self.criterion.generator_loss(logits.float(), step.index)

    def auxiliary_step(self, step: Step, autocast: Any) -> dict[str, float]:
        if not self.criterion.active(step.index) or "mim" not in step.cache:
            return {}
        fake, real = self._pairs(step)
        disc = self.aux["discriminator"]
        real = real.detach().requires_grad_(self.criterion.r1_gamma > 0)
        with autocast:
            real_logits = disc(real)
            fake_logits = disc(fake.detach())
        # given real_inputs, the criterion adds R1 with its γ/2 weight when r1_gamma > 0
        loss = self.criterion.discriminator_loss(
            real_logits.float(), fake_logits.float(), step.index, real_inputs=real
        )
        if self._micro_batches is None:  # called outside the engine's step: step now
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step_discriminator(1)
        else:  # accumulate; the step's last micro-batch is followed by one optimizer step
            loss.backward()
            self._micro_batches += 1
        return {"loss_disc": float(loss.detach())}

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        """The discriminator takes one optimizer step per training step, on the mean of its
        micro-batches' gradients (a skipped step discards them)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._micro_batches = 0
        try:
            yield
            if self._micro_batches:
                self._step_discriminator(self._micro_batches)
        finally:
            self._micro_batches = None
            self.optimizer.zero_grad(set_to_none=True)

    def _step_discriminator(self, micro_batches: int) -> None:
        disc = self.aux["discriminator"]
        if micro_batches > 1:
            for param in disc.parameters():
                if param.grad is not None:
                    param.grad.div_(micro_batches)
        _all_reduce_grads(disc)
        self.optimizer.step()

    def aux_state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_aux_state_dict(self, state: dict[str, Any]) -> None:
        # a run continued in a new directory may change objectives.speckle_gan.params.lr
        load_optimizer_state(self.optimizer, state["optimizer"])


class _DistillationObjective(Objective):
    """A projection head on the student (copied into the EMA teacher with the backbone)
    whose last layer may stay frozen for the first steps; subclasses add the criterion."""

    needs_teacher = True

    def __init__(
        self,
        context: ObjectiveContext,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        nlayers: int,
        norm_last_layer: bool,
        freeze_last_layer_steps: int,
    ) -> None:
        super().__init__(context)
        self.head_args = dict(
            in_dim=context.embed_dim,
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            nlayers=nlayers,
            norm_last_layer=norm_last_layer,
        )
        self.freeze_last_layer_steps = freeze_last_layer_steps

    def build_heads(self) -> nn.ModuleDict:
        from arlkit.models.heads import DINOHead

        return nn.ModuleDict({"head": DINOHead(**self.head_args)})

    def accumulating(self) -> contextlib.AbstractContextManager[Any]:
        """One center update per training step, over all its micro-batches."""
        return self.aux["criterion"].accumulating_center()

    def after_backward(self, step: Step, student: nn.Module) -> None:
        if step.index < self.freeze_last_layer_steps:
            for name, param in student.heads[self.name]["head"].named_parameters():
                if "last_layer" in name:
                    param.grad = None


class SelfDistillationObjective(_DistillationObjective):
    """DINO-style self-distillation between the student and an EMA teacher.

    The student sees the masked global views (shared pass with MIM) and the local
    views; the teacher sees the unmasked global views.

    Args:
        context: injected by the engine.
        out_dim: prototypes of the projection head.
        hidden_dim, bottleneck_dim, nlayers: projection head shape.
        norm_last_layer: weight-normalised last layer with fixed norm (DINO's default).
        freeze_last_layer_steps: the last layer gets no update for this many steps.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps: teacher sharpening.
        student_temp: student temperature.
        center_momentum: EMA momentum of the teacher center.
    """

    def __init__(
        self,
        context: ObjectiveContext,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        freeze_last_layer_steps: int = 0,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__(context, out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer,
                         freeze_last_layer_steps)
        if context.n_global + context.n_local < 2:
            raise ConfigError(
                "self_distillation needs at least two views per image; use the multicrop views"
            )
        self.aux["criterion"] = SelfDistillationLoss(
            out_dim, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps, student_temp,
            center_momentum, teacher_views=context.n_global,
        )

    def teacher_forward(self, step: Step, teacher: nn.Module) -> None:
        tokens = step.teacher_global(teacher)
        step.teacher[self.name] = teacher.heads[self.name]["head"](tokens[:, 0])

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        head = student.heads[self.name]["head"]
        cls = [step.student_global(student)[:, 0]]
        local = step.student_local(student)
        if local is not None:
            cls.append(local[:, 0])
        student_out = head(torch.cat(cls))  # (V·B, D)
        teacher_out = step.teacher[self.name]  # (V_g·B, D)
        return self.aux["criterion"](student_out.float(), teacher_out.float(), step.index)


class PatchDistillationObjective(_DistillationObjective):
    """iBOT's masked image modelling in feature space: at every masked patch of a global
    view the student predicts the EMA teacher's prototype distribution for that patch of
    the unmasked view (:class:`arlkit.losses.PatchDistillationLoss`).

    Beyond the paper: pixel MIM asks the encoder for grey levels, this asks it for the
    teacher's patch *features*, a target that gets more semantic as the teacher learns.
    Combine it with ``self_distillation`` for iBOT (the class-token loss then also sees the
    masked views). Without ``mim`` this objective draws the mask (``mask_*`` below); with
    ``mim`` in the recipe both read ``mim``'s mask, so one student pass serves all
    objectives, and the ``mask_*`` and ``min_block_patches`` parameters here are not used.

    Args:
        context: injected by the engine.
        out_dim: prototypes of the patch head.
        hidden_dim, bottleneck_dim, nlayers: patch head shape. The patch head is separate
            from the class-token head; iBOT's default (``shared_head: false``) shares the
            head's MLP between the two and separates only the last layer.
        norm_last_layer: weight-normalised last layer with fixed norm.
        freeze_last_layer_steps: the last layer gets no update for this many steps.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps: teacher sharpening.
        student_temp: student temperature.
        center_momentum: EMA momentum of the patch center.
        mask_ratio: fraction of the patches of a masked view that are masked.
        mask_mode: ``block`` (iBOT) or ``random``.
        mask_probability: share of the global views that are masked at all (iBOT: 0.5);
            unmasked views still feed the class-token loss.
        min_block_patches: smallest block of ``block`` masking, in patches (as for ``mim``).
    """

    def __init__(
        self,
        context: ObjectiveContext,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        freeze_last_layer_steps: int = 0,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        mask_ratio: float = 0.3,
        mask_mode: Literal["random", "block"] = "block",
        mask_probability: float = 0.5,
        min_block_patches: int = 4,
    ) -> None:
        super().__init__(context, out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer,
                         freeze_last_layer_steps)
        if context.sparse_encoder:
            raise ConfigError(
                "patch_distillation needs every patch token of the masked views; the sparse "
                "(MAE) encoder drops them: set model.backbone.params.mask_mode: token"
            )
        if not 0.0 < mask_probability <= 1.0:
            raise ConfigError(
                f"patch_distillation: mask_probability must be in (0, 1], got {mask_probability}"
            )
        self.generator = MaskGenerator(context.grid, mask_ratio, mask_mode,
                                       min_block_patches=min_block_patches)
        self.mask_probability = mask_probability
        self._own_mask = "mim" not in context.objectives
        self.aux["criterion"] = PatchDistillationLoss(
            out_dim, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_steps, student_temp,
            center_momentum,
        )

    @property
    def draws_mask(self) -> bool:
        return self._own_mask

    def make_mask(self, batch_rows: int, generator: torch.Generator) -> Tensor | None:
        if not self._own_mask:
            return None  # mim draws the mask
        mask = self.generator(batch_rows, generator=generator)
        if self.mask_probability < 1.0:
            keep = torch.rand(batch_rows, generator=generator) < self.mask_probability
            mask &= keep[:, None]
        return mask

    def _patches(self, tokens: Tensor) -> Tensor:
        return tokens[:, self.context.num_prefix_tokens :]

    def teacher_forward(self, step: Step, teacher: nn.Module) -> None:
        tokens = self._patches(step.teacher_global(teacher))
        step.teacher[self.name] = teacher.heads[self.name]["head"](tokens)  # (R, N, D)

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        if step.mask is None:
            raise ConfigError(f"{self.name}: the engine produced no mask")
        tokens = self._patches(step.student_global(student))
        student_out = student.heads[self.name]["head"](tokens)
        return self.aux["criterion"](
            student_out.float(), step.teacher[self.name].float(), step.mask, step.index
        )


class KoLeoObjective(Objective):
    """DINOv2's KoLeo regulariser on the student's class tokens of the global views
    (:class:`arlkit.losses.KoLeoLoss`; neighbours searched among the images of one view
    on this process). It spreads the images over the feature sphere, against the collapse
    of the features onto a few directions; give it a small recipe weight. DINOv2's 0.1
    multiplies the *sum* of its two global views' losses, this the *mean* over the
    ``n_global`` views: DINOv2's strength is a weight of ``0.1 · n_global`` (0.2) here.

    Args:
        context: injected by the engine.
        eps: added to the nearest-neighbour distances inside the log.
    """

    def __init__(self, context: ObjectiveContext, eps: float = 1e-8) -> None:
        super().__init__(context)
        self.criterion = KoLeoLoss(views=context.n_global, eps=eps)

    def loss(self, step: Step, student: nn.Module) -> Tensor:
        if step.batch_size < 2:
            raise ConfigError(
                f"{self.name}: needs at least 2 images per process and micro-batch, got "
                f"{step.batch_size}; raise data.batch_size"
            )
        return self.criterion(step.student_global(student)[:, 0])


def _all_reduce_grads(module: nn.Module) -> None:
    """Average gradients over processes (the discriminator is not wrapped in DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= dist.get_world_size()
