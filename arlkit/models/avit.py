"""A-ViT: a ViT whose blocks are ACDT blocks (anatomy-conditional deformable attention).

One code path serves the paper's model and its ablations: ``deformable=False`` gives a
plain ViT (same parameter names as timm's ``VisionTransformer`` blocks), and
``conditioned=False`` keeps deformable sampling without the organ. Inputs have
``in_chans=1`` by default; any size that is a multiple of the patch size works (position
embeddings are interpolated; see :func:`resize_to_patch_multiple` for other sizes).

The conditioner, deformable operator and offset network arrive as ``(name, params)``
pairs and are built from :data:`arlkit.registry.default_registries` when the model is
constructed (the registry is imported there, so importing this module stays light).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, build_sincos2d_pos_embed, resample_abs_pos_embed, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from arlkit.conditioners.base import Condition, Conditioner, canonical_condition
from arlkit.errors import ConfigError, DataError
from arlkit.models.acdt import ACDTBlock, ChannelMixing
from arlkit.taxonomy import Taxonomy

__all__ = ["SIZES", "AViT", "checkpoint_filter_fn", "resize_to_patch_multiple"]

#: (embed_dim, depth, num_heads) per size; base = ViT-B/16.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}

Spec = tuple[str, dict[str, Any]]


def resize_to_patch_multiple(
    x: torch.Tensor, patch_size: int, max_side: int | None = None
) -> torch.Tensor:
    """Resize images so both sides are multiples of the patch size (the resizing rule).

    The aspect ratio is kept: first the longer side is scaled down to ``max_side`` (if
    given and exceeded), then each side is rounded to the nearest multiple of
    ``patch_size`` (at least one patch). A 1280×960 scan with ``max_side=448`` becomes
    448×336 (28×21 patches of 16).

    Args:
        x: images ``(B, C, H, W)``.
        patch_size: the model's patch size.
        max_side: upper bound on the longer side, in pixels (``None``: no bound).

    Returns:
        ``(B, C, H', W')``, bilinear with antialiasing; ``x`` itself if already fitting.
    """
    h, w = x.shape[-2:]
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    new = [max(patch_size, int(s * scale / patch_size + 0.5) * patch_size) for s in (h, w)]
    if new == [h, w]:
        return x
    return F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)


class AViT(nn.Module):
    """Anatomy-aware ViT backbone (timm-compatible interface).

    Args:
        size: preset ``(embed_dim, depth, num_heads)`` from :data:`SIZES`.
        patch_size: patch side in pixels.
        img_size: nominal input side; learned position embeddings are made for it.
        in_chans: input channels (1 for B-mode ultrasound).
        deformable: ACDT sampling of keys/values; ``False`` = plain ViT.
        conditioned: add the organ context before the offset network.
        kernel_size: sampling kernel side (``K = kernel_size²`` points).
        offset_groups: offset groups ``G`` (``None``: one per head).
        channel_mixing: deformable weight: ``depthwise``, ``grouped`` or ``full``.
        drop_path_rate: stochastic depth, increasing linearly to this value.
        layer_scale_init: layer-scale initial value; ``None`` disables it.
        pos_embed: ``learned`` (interpolated to other sizes) or fixed 2-D ``sincos``.
        mask_mode: ``token`` replaces masked patches by a learned token (SimMIM/iBOT);
            ``drop`` removes them from the encoder (MAE; only with ``deformable=False``).
        embed_dim: overrides the width of ``size``.
        depth: overrides the depth of ``size``.
        num_heads: overrides the heads of ``size``.
        mlp_ratio: MLP hidden width / width.
        qkv_bias: bias on q/k/v projections.
        num_classes: classifier outputs; 0 = no head (``forward`` returns the embedding).
        global_pool: ``token`` (class token) or ``avg`` (mean of patch tokens).
        taxonomy: organ classes (injected by the builder; default 16 organs).
        conditioner: ``(name, params)`` of the conditioner (injected).
        deform_op: ``(name, params)`` of the deformable operator (injected).
        offset_net: ``(name, params)`` of the offset network (injected).

    Raises:
        ConfigError: unknown size or inconsistent options.
    """

    def __init__(
        self,
        size: Literal["tiny", "small", "base"] = "base",
        patch_size: int = 16,
        img_size: int = 224,
        in_chans: int = 1,
        deformable: bool = True,
        conditioned: bool = True,
        kernel_size: int = 3,
        offset_groups: int | None = None,
        channel_mixing: ChannelMixing = "depthwise",
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        pos_embed: Literal["learned", "sincos"] = "learned",
        mask_mode: Literal["token", "drop"] = "token",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_classes: int = 0,
        global_pool: Literal["token", "avg"] = "token",
        taxonomy: Taxonomy | None = None,
        conditioner: Spec = ("onehot", {}),
        deform_op: Spec = ("reference", {}),
        offset_net: Spec = ("dwconv", {}),
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ConfigError(f"avit: unknown size {size!r}; choose one of {sorted(SIZES)}")
        if mask_mode not in ("token", "drop") or (mask_mode == "drop" and deformable):
            raise ConfigError(
                f"avit: mask_mode={mask_mode!r} with deformable={deformable}: 'drop' (MAE's "
                "sparse encoder) needs deformable=False, as sampling needs the full grid; "
                "use mask_mode='token'"
            )
        if pos_embed not in ("learned", "sincos") or global_pool not in ("token", "avg"):
            raise ConfigError(f"avit: bad pos_embed={pos_embed!r} or global_pool={global_pool!r}")
        d0, n0, h0 = SIZES[size]
        self.embed_dim = self.num_features = embed_dim or d0
        self.depth, heads = depth or n0, num_heads or h0
        self.patch_size, self.in_chans, self.img_size = patch_size, in_chans, img_size
        self.num_prefix_tokens = 1
        self.taxonomy = taxonomy if taxonomy is not None else Taxonomy()
        self.deformable, self.conditioned = deformable, conditioned and deformable
        self.mask_mode, self.pos_embed_type, self.global_pool = mask_mode, pos_embed, global_pool
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, self.embed_dim, strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.base_grid = (img_size // patch_size, img_size // patch_size)
        self.pos_embed: nn.Parameter | None = None
        if pos_embed == "learned":
            n_pos = 1 + self.base_grid[0] * self.base_grid[1]
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, self.embed_dim))
        g = offset_groups or heads
        # timm's ViT normalises with eps=1e-6 (not LayerNorm's 1e-5): ViT weights then give
        # the same numbers, which matters for near-constant tokens such as the class token
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        op = _build("deform_ops", deform_op) if deformable else None
        dpr = [drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
        self.blocks = nn.ModuleList(
            ACDTBlock(
                self.embed_dim,
                heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                layer_scale_init=layer_scale_init,
                deformable=deformable,
                kernel_size=kernel_size,
                offset_groups=g,
                channel_mixing=channel_mixing,
                norm_layer=norm_layer,
                conditioner=_build(
                    "conditioners", conditioner, dim=self.embed_dim, taxonomy=self.taxonomy
                )
                if self.conditioned
                else None,
                deform_op=op,
                offset_net=_build(
                    "offset_nets", offset_net, dim=self.embed_dim, num_points=g * kernel_size**2
                )
                if deformable
                else None,
            )
            for i in range(self.depth)
        )
        self.norm = norm_layer(self.embed_dim)
        self.num_classes = num_classes
        self.head: nn.Module = (
            nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and ".conditioner" not in name:
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- timm conveniences ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth, as timm's ViT (used by timm's layer-wise lr decay)."""
        return {
            "stem": r"^cls_token|pos_embed|patch_embed|mask_token",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a new ``Linear(embed_dim, num_classes)`` (0: no head)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ConfigError(
                    f"avit: global_pool must be 'token' or 'avg', got {global_pool!r}"
                )
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()

    # -- embedding ------------------------------------------------------------------------
    def grid_size(self, x: torch.Tensor) -> tuple[int, int]:
        """Token grid ``(H/p, W/p)`` of images ``x``; raises DataError if not divisible."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if x.dim() != 4 or x.shape[1] != self.in_chans or h % p or w % p:
            raise DataError(
                f"avit: expected images (B, {self.in_chans}, H, W) with H and W multiples of "
                f"{p}, got {tuple(x.shape)}; resize with "
                "arlkit.models.avit.resize_to_patch_multiple"
            )
        return h // p, w // p

    def _pos(self, grid: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
        """Position embeddings ``(1, 1+N, C)`` for ``grid`` (class token first)."""
        if self.pos_embed is None:
            patches = build_sincos2d_pos_embed(list(grid), dim=self.embed_dim, device=x.device)
            return torch.cat([patches.new_zeros(1, self.embed_dim), patches])[None].to(x.dtype)
        if grid == self.base_grid:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, list(grid), list(self.base_grid), num_prefix_tokens=1
        )

    def _embed(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """Patch + position embeddings with masking → ``(B, 1+N', C)`` and the grid (or None)."""
        grid = self.grid_size(x)
        tokens = self.patch_embed(x)  # (B, N, C)
        b, n, c = tokens.shape
        if mask is not None and (mask.shape != (b, n) or mask.dtype != torch.bool):
            raise DataError(f"avit: mask must be bool (B, N) = ({b}, {n}), got {tuple(mask.shape)}")
        if mask is not None and self.mask_mode == "token":
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        pos = self._pos(grid, tokens)
        tokens = tokens + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
        if mask is not None and self.mask_mode == "drop":
            n_keep = (~mask).sum(1)
            if bool((n_keep != n_keep[0]).any()):
                raise DataError(
                    "avit: mask_mode='drop' needs the same number of masked patches per image"
                )
            # stable sort puts visible (False) patches first, in increasing patch order
            keep = torch.sort(mask.int(), dim=1, stable=True).indices[:, : int(n_keep[0])]
            tokens = tokens.gather(1, keep[..., None].expand(-1, -1, c))  # (B, N_vis, C)
            return torch.cat([cls, tokens], 1), None
        return torch.cat([cls, tokens], 1), grid

    @property
    def condition_keys(self) -> tuple[str, ...]:
        """Side information the blocks' conditioners read beside the organ (e.g. ``probe``):
        the keys a condition mapping should carry (see :mod:`arlkit.conditioners.base`)."""
        keys: dict[str, None] = {}
        if self.conditioned:
            for blk in self.blocks:
                keys.update(dict.fromkeys(getattr(blk.conditioner, "condition_keys", ())))
        return tuple(keys)

    def _organ(
        self, organ: Condition, batch: int, device: torch.device
    ) -> torch.Tensor | dict[str, torch.Tensor] | None:
        if not self.conditioned:
            return None
        cond = canonical_condition(organ, batch, self.taxonomy, device)
        first = self.blocks[0].conditioner
        if isinstance(first, Conditioner):
            # conditioning dropout belongs to the image: one draw shared by every block
            if isinstance(cond, dict):
                cond["organ"] = first.drop(cond["organ"])
            else:
                cond = first.drop(cond)
        return cond

    def _run_block(
        self, blk: nn.Module, x: torch.Tensor, grid: tuple[int, int] | None, organ: Any
    ) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid, organ, use_reentrant=False)
        return blk(x, grid, organ)

    # -- forward --------------------------------------------------------------------------
    def forward_features(
        self, x: torch.Tensor, organ: Condition = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-normed tokens.

        Args:
            x: images ``(B, in_chans, H, W)``, sides multiples of ``patch_size``.
            organ: organ batch (``None``: unknown) or condition mapping (the organ plus side
                information such as ``probe``); see :mod:`arlkit.conditioners.base`.
            mask: ``(B, N)`` bool, True = masked patch (see ``mask_mode``).

        Returns:
            ``(B, 1+N, C)``; with ``mask_mode='drop'`` and a mask, ``(B, 1+N_visible, C)``.

        Raises:
            DataError: bad image size, mask or organ batch.
        """
        tokens, grid = self._embed(x, mask)
        organ_c = self._organ(organ, x.shape[0], x.device)
        for blk in self.blocks:
            tokens = self._run_block(blk, tokens, grid, organ_c)
        return self.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens ``(B, 1+N, C)`` → ``(B, C)``, then the classifier unless ``pre_logits``."""
        pooled = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, organ: Condition = None) -> torch.Tensor:
        """Pooled embedding ``(B, C)`` (logits ``(B, num_classes)`` when a head is set)."""
        return self.forward_head(self.forward_features(x, organ))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        organ: Condition = None,
        indices: int | list[int] | None = 4,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        stop_early: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of chosen blocks, as in timm's ``VisionTransformer``.

        Args:
            x: images ``(B, in_chans, H, W)``.
            organ: organ batch.
            indices: an int ``n`` takes the last ``n`` blocks; a list takes those indices.
            norm: apply the final norm to each intermediate.
            output_fmt: ``NCHW`` → ``(B, C, H/p, W/p)``; ``NLC`` → ``(B, N, C)``.
            intermediates_only: return only the list.
            stop_early: stop after the last requested block (only with intermediates_only).

        Returns:
            the list of intermediates, or ``(final normed tokens (B, 1+N, C), list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"avit: output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        tokens, grid = self._embed(x, None)
        organ_c = self._organ(organ, x.shape[0], x.device)
        blocks = (
            self.blocks[: max_index + 1] if (stop_early and intermediates_only) else self.blocks
        )
        out: list[torch.Tensor] = []
        for i, blk in enumerate(blocks):
            tokens = self._run_block(blk, tokens, grid, organ_c)
            if i in take:
                inter = self.norm(tokens) if norm else tokens
                inter = inter[:, self.num_prefix_tokens :]  # (B, N, C)
                if output_fmt == "NCHW":  # (B, N, C) -> (B, C, H/p, W/p)
                    inter = inter.transpose(1, 2).reshape(x.shape[0], -1, *grid)
                out.append(inter.contiguous())
        if intermediates_only:
            return out
        return self.norm(tokens), out

    def extra_repr(self) -> str:
        return (
            f"deformable={self.deformable}, conditioned={self.conditioned}, "
            f"taxonomy={self.taxonomy.num_classes} organs, params={_count(self) / 1e6:.1f}M"
        )


def checkpoint_filter_fn(state_dict: dict[str, Any], model: AViT) -> dict[str, Any]:
    """Fit a state dict saved at another image size to ``model`` (timm's ``pretrained_filter_fn``).

    A learned position embedding saved for another (square) grid is resampled to the
    model's ``base_grid`` as timm's ViT does on load (bicubic, class token kept); every other
    entry passes unchanged.

    Args:
        state_dict: tensors by parameter name (an ``arlkit export`` or ``model.state_dict()``).
        model: the model that will load them.

    Returns:
        a new dict ready for ``model.load_state_dict``.
    """
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = resample_abs_pos_embed(
            pos, list(model.base_grid), num_prefix_tokens=model.num_prefix_tokens
        )
    return out


def _count(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())


def _build(kind: str, spec: Spec, **injected: Any) -> Any:
    """Build ``(name, params)`` from the default registries (imported here: keeps imports light)."""
    from arlkit.registry import default_registries

    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)):
        raise ConfigError(f"avit: {kind} must be a (name, params) pair, got {spec!r}")
    name, params = spec
    return default_registries[kind].build(name, dict(params or {}), **injected)
