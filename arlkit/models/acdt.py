"""The ACDT block (anatomy-conditional deformable transformer), DESIGN §1.

Tokens ``(B, P+N, C)`` (``P`` prefix tokens, then an ``H×W`` grid) go through::

    h   = norm1(x)
    x_P = grid(h[:, P:])                          (B, C, H, W)
    Δp  = g_θ(x_P + AC)                            offsets from the conditioned grid
    y_P = Σ_k w_k · S(x_P, p + p_k + Δp_k)         deformable sampling of the *unconditioned* grid
    x   = x + attn(q = h, kv = [h[:, :P], y_P])    queries from the un-deformed tokens
    x   = x + mlp(norm2(x))

with optional layer-scale and drop-path on both residual branches. With
``deformable=False`` the sampling step is skipped (``kv = h``) and the block is a plain ViT
block with the same parameter names as timm's (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), so an ablation changes one switch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from arlkit.conditioners.base import Condition, Conditioner, organ_of
from arlkit.errors import ConfigError
from arlkit.ops import DeformOp

__all__ = ["ACDTBlock", "DeformableAttention", "identity_deform_weight"]

ChannelMixing = Literal["depthwise", "grouped", "full"]


def identity_deform_weight(dim: int, kernel_size: int, channel_groups: int) -> torch.Tensor:
    """A ``(dim, dim // channel_groups, K)`` weight that copies each channel's centre sample.

    Why this initialisation: with the zero-initialised offset network the block then
    samples ``y_P = x_P`` exactly, so a new A-ViT computes the same function as a ViT with
    the same weights (pretrained ViT weights transfer, training starts from a known-good
    model), and the ``K - 1`` other taps start at zero and grow only where they help. A
    uniform ``1/K`` kernel would instead blur the keys and values of every layer at init.
    """
    k = kernel_size * kernel_size
    per_group = dim // channel_groups
    weight = torch.zeros(dim, per_group, k)
    # output channel c reads input channel c, which is entry c % per_group of its group
    weight[torch.arange(dim), torch.arange(dim) % per_group, k // 2] = 1.0
    return weight


def _is_canonical(organ: object, conditioner: Conditioner, batch_size: int) -> bool:
    """Whether ``organ`` has the form :func:`~arlkit.conditioners.canonical_organ` returns
    (``(B,)`` long or ``(B, K+1)`` float, on the conditioner's device); checked without
    reading the values, so without a device synchronisation."""
    if not isinstance(organ, torch.Tensor) or organ.shape[:1] != (batch_size,):
        return False
    param = next(conditioner.parameters(), None)
    if param is not None and organ.device != param.device:
        return False
    if organ.is_floating_point():
        return organ.dim() == 2 and organ.shape[1] == conditioner.num_classes + 1
    return organ.dtype == torch.long and organ.dim() == 1


class DeformableAttention(nn.Module):
    """Multi-head attention with queries from ``x`` and keys/values from ``kv``.

    Keeps timm's fused ``qkv`` parameter (and name) so ViT weights load unchanged.

    Args:
        dim: width ``C``.
        num_heads: heads; ``C`` must be divisible by it.
        qkv_bias: bias on the q/k/v projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"attention: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, C)`` queries, ``kv (B, S, C)`` keys/values (``None``: self-attention)."""
        b, t, c = x.shape
        heads = self.num_heads
        if kv is None:
            qkv = self.qkv(x).view(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, heads, T, C/heads)
        else:
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:c], None if bias is None else bias[:c])
            q = q.view(b, t, heads, c // heads).transpose(1, 2)  # (B, heads, T, C/heads)
            kvp = F.linear(kv, w[c:], None if bias is None else bias[c:])
            kvp = kvp.view(b, kv.shape[1], 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            k, v = kvp.unbind(0)  # each (B, heads, S, C/heads)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.proj_drop(self.proj(out))


class ACDTBlock(nn.Module):
    """One ACDT block; see the module docstring.

    Args:
        dim: width ``C``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``C``.
        qkv_bias: bias on q/k/v.
        drop_path: stochastic-depth rate of both residual branches.
        layer_scale_init: initial layer-scale value; ``None`` disables layer-scale.
        deformable: sample keys/values deformably; ``False`` gives a plain ViT block.
        kernel_size: side ``ks`` of the sampling kernel, ``K = ks²`` points.
        offset_groups: offset groups ``G`` (default ``num_heads``).
        channel_mixing: deformable weight ``depthwise (C, 1, K)``, ``grouped``
            ``(C, C/G, K)`` (mixing within each offset group) or ``full (C, C, K)``.
        conditioner: organ → ``(B, C)`` context; ``None`` disables conditioning.
        deform_op: the operator (:mod:`arlkit.ops` contract); required if deformable.
        offset_net: ``(B, C, H, W)`` → ``(B, 2·G·K, H, W)``; required if deformable.
        num_prefix_tokens: tokens before the grid (class token) that are not sampled.
        attn_drop: attention dropout. proj_drop: dropout after projections.
        norm_layer: normalisation class (or factory of the width, e.g. a ``partial``).
        act_layer: MLP activation class.

    Raises:
        ConfigError: inconsistent options (missing operator, indivisible widths, ...).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        deformable: bool = True,
        kernel_size: int = 3,
        offset_groups: int | None = None,
        channel_mixing: ChannelMixing = "depthwise",
        conditioner: nn.Module | None = None,
        deform_op: DeformOp | None = None,
        offset_net: nn.Module | None = None,
        num_prefix_tokens: int = 1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.deformable = deformable
        self.kernel_size = kernel_size
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = norm_layer(dim)
        self.attn = DeformableAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.conditioner = conditioner if deformable else None
        self.offset_net = offset_net if deformable else None
        self.deform_op = deform_op if deformable else None
        self.offset_groups = offset_groups or num_heads
        if not deformable:
            return
        if deform_op is None or offset_net is None:
            raise ConfigError("ACDT block: deformable=True needs a deform_op and an offset_net")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"ACDT block: kernel_size must be odd, got {kernel_size}")
        if dim % self.offset_groups != 0:
            raise ConfigError(
                f"ACDT block: width {dim} is not divisible by {self.offset_groups} offset groups"
            )
        groups = {"depthwise": dim, "grouped": self.offset_groups, "full": 1}
        if channel_mixing not in groups:
            raise ConfigError(
                f"ACDT block: channel_mixing must be one of {sorted(groups)}, got "
                f"{channel_mixing!r}"
            )
        self.deform_weight = nn.Parameter(
            identity_deform_weight(dim, kernel_size, groups[channel_mixing])
        )

    def context(self, organ: Condition, batch_size: int) -> torch.Tensor | None:
        """The anatomical context ``(B, C)``, or ``None`` when conditioning is off.

        ``organ`` (an organ batch or a condition mapping) should already be canonical
        (:func:`arlkit.conditioners.canonical_condition`); built-in conditioners then skip
        re-validation and conditioning dropout (the backbone draws it once per image for
        all blocks, :meth:`arlkit.conditioners.base.Conditioner.drop`). An organ that is
        not in canonical form (names, ``(B, K)`` probabilities, another device) goes through
        the conditioner's ``forward``, which validates it. Conditioners that read side
        information (``condition_keys``) receive the whole condition: built-in subclasses
        through :meth:`~arlkit.conditioners.base.Conditioner.encode_condition`, the others
        (and subclasses that override only ``forward``) through ``forward``.
        """
        if self.conditioner is None:
            return None
        cond = self.conditioner
        if (
            isinstance(cond, Conditioner)
            and _is_canonical(organ_of(organ), cond, batch_size)
            # a subclass that reads side information through forward() alone gets forward()
            and (not cond.condition_keys
                 or type(cond).encode_condition is not Conditioner.encode_condition)
        ):
            return cond.encode_condition(organ)
        return cond(organ, batch_size)

    def sample(
        self, h: torch.Tensor, grid_size: tuple[int, int], organ: Condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deformed grid tokens of normed tokens ``h (B, P+N, C)``.

        Returns:
            ``(y, offset)``: ``y (B, N, C)`` sampled tokens and ``offset (B, 2·G·K, H, W)``.
        """
        b, _, c = h.shape
        gh, gw = grid_size
        # (B, N, C) -> (B, C, N) -> (B, C, H, W); a channels-last view, no copy
        x_p = h[:, self.num_prefix_tokens :].transpose(1, 2).reshape(b, c, gh, gw)
        ctx = self.context(organ, b)
        cond = x_p if ctx is None else x_p + ctx.to(x_p.dtype)[:, :, None, None]
        offset = self.offset_net(cond)
        want = (b, 2 * self.offset_groups * self.kernel_size**2, gh, gw)
        if tuple(offset.shape) != want:  # the op would infer other groups from the shape
            raise ConfigError(
                f"ACDT block: the offset net returned offsets of shape {tuple(offset.shape)}; "
                f"with {self.offset_groups} offset groups and a {self.kernel_size}×"
                f"{self.kernel_size} kernel they must be (B, 2·G·K, H, W) = {want}: build the "
                "offset net with the num_points it is given (G·K)"
            )
        y = self.deform_op(x_p, offset, self.deform_weight, kernel_size=self.kernel_size)
        return y.flatten(2).transpose(1, 2), offset  # (B, C, H, W) -> (B, N, C)

    def forward(
        self,
        x: torch.Tensor,
        grid_size: tuple[int, int] | None = None,
        organ: Condition = None,
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: tokens ``(B, P+N, C)``.
            grid_size: ``(H, W)`` with ``H·W = N``; needed when deformable.
            organ: organ batch, preferably canonical (``(B,)`` long or ``(B, K+1)``), or a
                condition mapping (:mod:`arlkit.conditioners.base`).

        Returns:
            ``(B, P+N, C)``.

        Raises:
            ConfigError: deformable without a grid (e.g. MAE-style dropped tokens).
        """
        h = self.norm1(x)
        if self.deformable:
            if (
                grid_size is None
                or grid_size[0] * grid_size[1] != x.shape[1] - self.num_prefix_tokens
            ):
                raise ConfigError(
                    f"ACDT block: deformable sampling needs the full token grid; got "
                    f"{x.shape[1] - self.num_prefix_tokens} tokens for grid {grid_size}"
                )
            y, _ = self.sample(h, grid_size, organ)
            kv = torch.cat([h[:, : self.num_prefix_tokens], y], 1)  # (B, P+N, C)
            attn = self.attn(h, kv)
        else:
            attn = self.attn(h)
        x = x + self.drop_path1(self.ls1(attn))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
