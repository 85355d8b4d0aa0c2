"""Reconstruction decoders for masked image modelling.

One decoder serves both encoder styles of the design tension in DESIGN.md §1:

* full grid (SimMIM/iBOT style, needed by deformable sampling): the encoder already
  put mask tokens in place; the decoder maps every patch token to pixels;
* sparse (MAE style): the encoder returns only visible tokens; the decoder scatters
  them into the grid and fills the holes with its own mask token.

``depth=0`` gives SimMIM's linear head; ``depth>0`` a light transformer (MAE's
decoder: the prefix tokens go through its blocks too, at a zero position embedding, and
are dropped before the last layer; every linear layer starts Xavier-uniform with zero
bias, as MAE's ``initialize_weights`` does). A sparse encoder needs ``depth>0``: a linear
head sees each position alone, so at a masked one it would only see the mask token.

The last layer, :attr:`MIMDecoder.last_layer`, is the shared parameter the adaptive
balancer measures gradients against (VQGAN's adaptive weight).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from arlkit.errors import ConfigError

__all__ = ["MIMDecoder", "sincos_2d"]


def sincos_2d(dim: int, grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``(H·W, dim)``, ``dim % 4 == 0``.

    MAE's formula with the halves swapped: here the first ``dim/2`` channels encode the
    row, MAE's ``get_2d_sincos_pos_embed`` encodes the column there. A fixed channel
    permutation, immaterial to a decoder trained with it.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim / 4))
    out_y = ys.reshape(-1, 1) * omega  # (H·W, dim/4)
    out_x = xs.reshape(-1, 1) * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


class MIMDecoder(nn.Module):
    """Tokens → pixel patches ``(B, N, P·P·C)``.

    Args:
        in_dim: encoder width.
        patch_size: P.
        in_chans: image channels C.
        dim: decoder width (ignored when ``depth == 0``).
        depth: transformer blocks; 0 = linear head.
        num_heads: attention heads of the decoder blocks.
        num_prefix_tokens: leading tokens (class token) the encoder returns.
        sparse: the encoder drops masked tokens (MAE); the decoder then owns a mask token.

    Raises:
        ConfigError: ``sparse`` with ``depth == 0``.
    """

    def __init__(
        self,
        in_dim: int,
        patch_size: int = 16,
        in_chans: int = 1,
        dim: int = 256,
        depth: int = 0,
        num_heads: int = 8,
        num_prefix_tokens: int = 1,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if sparse and depth <= 0:
            # the loss reads masked positions only, which would all hold the same mask token
            # and pass no gradient to the encoder
            raise ConfigError(
                "MIMDecoder: a sparse encoder (mask_mode: drop) needs a transformer decoder to "
                "fill the dropped positions from the visible ones; set decoder_depth > 0 (MAE: 8)"
            )

        self.patch_size, self.in_chans, self.depth = patch_size, in_chans, depth
        self.num_prefix_tokens = num_prefix_tokens
        width = dim if depth > 0 else in_dim
        self.embed = nn.Linear(in_dim, dim) if depth > 0 else nn.Identity()
        # Only a sparse encoder leaves holes to fill; an unused parameter would upset DDP.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if sparse else None
        self.blocks = nn.Sequential(*[Block(dim, num_heads, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width) if depth > 0 else nn.Identity()
        self.last_layer = nn.Linear(width, patch_size * patch_size * in_chans)
        for module in self.modules():  # MAE's initialize_weights (LayerNorms stay 1 / 0)
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, grid: tuple[int, int], mask: Tensor | None = None) -> Tensor:
        """Reconstruct every patch.

        Args:
            tokens: ``(B, T, C_enc)`` encoder output including prefix tokens; either
                all ``N = H·W`` patch tokens, or only the visible ones in patch order.
            grid: patch grid ``(H, W)``.
            mask: ``(B, N)`` bool, True = masked; needed when tokens are visible-only.

        Returns:
            ``(B, N, P·P·C)`` predicted pixels.
        """
        n, p = grid[0] * grid[1], self.num_prefix_tokens
        x = self.embed(tokens)  # (B, P+T', D)
        prefix, x = x[:, :p], x[:, p:]
        b, t, d = x.shape
        if t != n:
            if self.mask_token is None or mask is None or int((~mask[0]).sum()) != t:
                raise ValueError(f"decoder got {t} tokens for a {grid} grid without a matching mask")
            full = self.mask_token.to(x.dtype).expand(b, n, d).clone()
            full[~mask] = x.reshape(-1, d)  # visible tokens back in patch order
            x = full
        if self.depth > 0:
            x = x + sincos_2d(d, grid, x.device).to(x.dtype)  # prefix tokens: position 0
            x = self.norm(self.blocks(torch.cat([prefix, x], 1)))[:, p:]  # MAE's decoder
        return self.last_layer(x)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, in_chans={self.in_chans}, depth={self.depth}"
