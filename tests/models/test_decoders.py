"""MIMDecoder against SimMIM's linear head and MAE's position embedding; sparse mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.losses.mim import mim_loss
from arlkit.models.decoders import MIMDecoder, sincos_2d


def _mae_sincos(dim: int, size: int) -> torch.Tensor:
    """MAE's ``get_2d_sincos_pos_embed`` (util/pos_embed.py), without the class slot."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    ar = np.arange(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(ar, ar), axis=0).reshape(2, 1, size, size)  # w first
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float()


def test_sincos_is_maes_with_row_and_column_halves_swapped() -> None:
    ours = sincos_2d(16, (4, 4))
    torch.testing.assert_close(torch.cat([ours[:, 8:], ours[:, :8]], 1), _mae_sincos(16, 4))
    # a non-square grid: row-major positions, rows encoded in the first half
    rect = sincos_2d(8, (2, 3)).reshape(2, 3, 8)
    torch.testing.assert_close(rect[:, 0, :4], rect[:, 2, :4])
    torch.testing.assert_close(rect[0, :, 4:], rect[1, :, 4:])


def test_linear_head_is_simmims_conv_and_pixel_shuffle() -> None:
    torch.manual_seed(0)
    p, c, grid = 2, 1, (2, 3)
    dec = MIMDecoder(in_dim=8, patch_size=p, in_chans=c, depth=0)
    tokens = torch.randn(2, 1 + 6, 8)
    pred = dec(tokens, grid)  # (B, N, P·P·C), pixels (p, q, c)
    z = tokens[:, 1:].transpose(1, 2).reshape(2, 8, *grid)  # SimMIM's (B, C, H, W)
    w = dec.last_layer.weight[:, :, None, None]
    img = F.pixel_shuffle(F.conv2d(z, w, dec.last_layer.bias), p)  # (B, C, H·P, W·P)
    ref = img.reshape(2, c, grid[0], p, grid[1], p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, -1)
    torch.testing.assert_close(pred, ref)


def test_sparse_decoder_scatters_visible_tokens_in_patch_order() -> None:
    torch.manual_seed(0)
    dec = MIMDecoder(in_dim=8, patch_size=2, dim=8, depth=1, num_heads=2, sparse=True)
    dec.blocks = torch.nn.Sequential()  # look at the scattered grid itself
    dec.norm = torch.nn.Identity()
    dec.last_layer = torch.nn.Identity()
    mask = torch.tensor([[True, False, False, True, False, True],
                         [False, True, True, False, False, True]])
    visible = torch.randn(2, 3, 8)
    out = dec(torch.cat([torch.zeros(2, 1, 8), visible], 1), (2, 3), mask)
    grid = out - sincos_2d(8, (2, 3))  # (B, N, D)
    torch.testing.assert_close(grid[~mask], dec.embed(visible).reshape(-1, 8))
    torch.testing.assert_close(grid[mask], dec.mask_token.expand(6, 1, 8).reshape(6, 8))


def test_sparse_encoder_needs_a_transformer_decoder() -> None:
    # a linear head would predict every masked patch from the mask token alone: the
    # encoder would get no gradient from the MIM loss
    with pytest.raises(ConfigError, match="decoder_depth"):
        MIMDecoder(in_dim=8, patch_size=2, depth=0, sparse=True)
    torch.manual_seed(0)
    dec = MIMDecoder(in_dim=8, patch_size=2, dim=8, depth=1, num_heads=2, sparse=True)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, [1, 4, 5]] = True
    tokens = torch.randn(2, 1 + 3, 8, requires_grad=True)
    mim_loss(dec(tokens, (2, 3), mask), torch.randn(2, 6, 4), mask).backward()
    assert tokens.grad[:, 1:].abs().sum() > 0


def _mae_forward_decoder(dec: MIMDecoder, tokens: torch.Tensor, grid: tuple[int, int],
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's ``forward_decoder`` (models_mae.py) transcribed over ``dec``'s own layers: embed
    the class token and the visible tokens, append mask tokens, unshuffle (``ids_restore``),
    add the position embedding (a zero class slot), run the blocks, norm, predict, drop the
    class token. Our sin-cos halves are swapped against MAE's (see the test above)."""
    x = dec.embed(tokens)
    if mask is not None:  # visible tokens in patch order, then the masked ones
        b, n = mask.shape
        ids_shuffle = torch.argsort(mask.long(), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask_tokens = dec.mask_token.repeat(b, n + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
    pos = torch.cat([torch.zeros(1, x.shape[-1]), sincos_2d(x.shape[-1], grid)])
    x = x + pos
    for blk in dec.blocks:
        x = blk(x)
    return dec.last_layer(dec.norm(x))[:, 1:, :]


def test_transformer_decoder_is_maes_forward_decoder() -> None:
    torch.manual_seed(0)
    grid, dim = (2, 3), 16
    dec = MIMDecoder(in_dim=12, patch_size=2, dim=dim, depth=2, num_heads=2).eval()
    tokens = torch.randn(2, 1 + 6, 12)
    torch.testing.assert_close(dec(tokens, grid), _mae_forward_decoder(dec, tokens, grid))
    # the blocks attend to the class token, as MAE's do
    other = tokens.clone()
    other[:, 0] += 1.0
    assert not torch.allclose(dec(other, grid), dec(tokens, grid))
    # sparse: the visible tokens only, the rest from the decoder's mask token
    sparse = MIMDecoder(in_dim=12, patch_size=2, dim=dim, depth=2, num_heads=2, sparse=True).eval()
    mask = torch.tensor([[True, False, False, True, False, True],
                         [False, True, True, False, False, True]])
    visible = torch.cat([tokens[:, :1], tokens[:, 1:][~mask].view(2, 3, 12)], 1)
    torch.testing.assert_close(sparse(visible, grid, mask),
                               _mae_forward_decoder(sparse, visible, grid, mask))


def test_decoder_layers_start_as_maes() -> None:
    """MAE's ``initialize_weights``: Xavier-uniform linear layers with zero biases, LayerNorm
    1 / 0, mask token N(0, 0.02)."""
    torch.manual_seed(0)
    dec = MIMDecoder(in_dim=192, patch_size=4, dim=128, depth=2, num_heads=4, sparse=True)
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 2 * 4 + 1  # embed, 4 per block (qkv, proj, fc1, fc2), last
    for m in linears:
        fan_out, fan_in = m.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert m.weight.abs().max() <= bound
        assert abs(m.weight.std().item() - bound / 3**0.5) < 0.1 * bound  # uniform(-a, a)
        assert m.bias is None or not m.bias.any()
    norms = [m for m in dec.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(n.weight.eq(1).all() and not n.bias.any() for n in norms)
    assert abs(dec.mask_token.std().item() - 0.02) < 0.01
