"""Reference deformable operator in pure PyTorch (CPU and GPU; float32/bfloat16/float64).

The operator contract is in :mod:`arlkit.ops`. The implementation works on channels-last
rows: ``x`` is viewed as ``(B·H·W·G, C/G)`` rows (free for channels-last input), and for
each kernel point the four bilinear corners of every sample are fetched and blended by one
``embedding_bag(mode="sum", per_sample_weights=...)`` call, which gathers and blends
without materialising the corners. A custom autograd function saves only the inputs and
recomputes the samples one kernel point at a time in backward, so extra memory is
``O(|x|)`` rather than the ``O(K·|x|)`` that autograd through ``grid_sample`` keeps for
the weight gradient. Chosen by measurement on a 2-core CPU (ViT-Ti shapes, B=8, fwd+bwd):
about 1.2× faster than a ``grid_sample`` formulation, 3× faster than
``index_select`` + ``bmm`` gathers, and ~12× faster than ``torchvision.ops.deform_conv2d``.
Run ``benchmarks/bench_backbone.py`` for the current numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError

__all__ = ["check_deform_args", "deform_conv_reference"]


def check_deform_args(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
) -> tuple[int, int]:
    """Validate shapes against the operator contract.

    Returns:
        ``(G, channel_groups)``: offset groups and weight (channel) groups.

    Raises:
        ConfigError: a shape does not match the contract; the message says which.
    """
    if x.dim() != 4:
        raise ConfigError(f"deform op: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0 or dilation < 1:
        raise ConfigError(
            f"deform op: kernel_size must be odd and ≥ 1 and dilation ≥ 1, "
            f"got kernel_size={kernel_size}, dilation={dilation}"
        )
    b, c_in, h, w = x.shape
    k = kernel_size * kernel_size
    if offset.dim() != 4 or offset.shape[0] != b or offset.shape[2:] != (h, w):
        raise ConfigError(
            f"deform op: offset must be (B, 2·G·K, H, W) = ({b}, 2·G·{k}, {h}, {w}), "
            f"got {tuple(offset.shape)}"
        )
    if offset.shape[1] % (2 * k) != 0:
        raise ConfigError(
            f"deform op: offset has {offset.shape[1]} channels, not a multiple of 2·K = {2 * k}"
        )
    groups = offset.shape[1] // (2 * k)
    if c_in % groups != 0:
        raise ConfigError(f"deform op: {c_in} channels do not split into {groups} offset groups")
    if weight.dim() != 3 or weight.shape[2] != k or c_in % weight.shape[1] != 0:
        raise ConfigError(
            f"deform op: weight must be (C_out, C_in // channel_groups, K={k}) with C_in={c_in}, "
            f"got {tuple(weight.shape)}"
        )
    channel_groups = c_in // weight.shape[1]
    if weight.shape[0] % channel_groups != 0:
        raise ConfigError(
            f"deform op: C_out={weight.shape[0]} is not a multiple of channel_groups="
            f"{channel_groups}"
        )
    if mask is not None and tuple(mask.shape) != (b, groups * k, h, w):
        raise ConfigError(
            f"deform op: mask must be (B, G·K, H, W) = {(b, groups * k, h, w)}, "
            f"got {tuple(mask.shape)}"
        )
    return groups, channel_groups


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _geometry(
    offset: torch.Tensor, b: int, g: int, h: int, w: int, ks: int, dil: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Corner rows and bilinear weights of every sample, all kernel points at once.

    Samples are ordered ``(K, B, H, W, G)`` so that, for one kernel point, sample ``n`` is
    output row ``n`` of the ``(B·H·W·G, C/G)`` view of ``y`` (and of ``x``). The bilinear
    weight of corner ``(a, c)`` is ``wy[a] · wx[c]`` with the per-axis weights already zero
    for rows/columns outside the image, so corners outside contribute nothing and their
    (clamped, arbitrary) row index never matters.

    Returns:
        idx ``(K, NG, 4)`` long rows of the corners ``00, 01, 10, 11``,
        wgt ``(K, NG, 4)`` bilinear weights,
        wy, wx ``(K, NG, 2)`` per-axis weights ``[1 - l, l]`` times the axis validity,
        dwy, dwx ``(K, NG, 2)`` their derivatives in the position, ``[-valid0, valid1]``.
    """
    k = ks * ks
    dev = offset.device
    # (B, G, K, 2, H, W) -> (2, K, B, H, W, G)
    off = offset.view(b, g, k, 2, h, w).permute(3, 2, 0, 4, 5, 1).to(dtype).contiguous()
    centre = (ks - 1) / 2
    kk = torch.arange(k, device=dev)
    ki = ((kk // ks).to(dtype) - centre) * dil
    kj = ((kk % ks).to(dtype) - centre) * dil
    hh = torch.arange(h, device=dev, dtype=dtype)
    ww = torch.arange(w, device=dev, dtype=dtype)
    py = off[0] + (ki.view(k, 1, 1, 1, 1) + hh.view(1, 1, h, 1, 1))  # (K, B, H, W, G)
    px = off[1] + (kj.view(k, 1, 1, 1, 1) + ww.view(1, 1, 1, w, 1))
    n = b * h * w * g
    y0, x0 = torch.floor(py).view(k, n), torch.floor(px).view(k, n)
    ly, lx = py.view(k, n) - y0, px.view(k, n) - x0

    def axis(p0: torch.Tensor, frac: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
        lo = ((p0 >= 0) & (p0 <= size - 1)).to(dtype)  # first neighbour inside
        hi = ((p0 >= -1) & (p0 <= size - 2)).to(dtype)  # second neighbour inside
        return torch.stack([(1 - frac) * lo, frac * hi], -1), torch.stack([-lo, hi], -1)

    wy, dwy = axis(y0, ly, h)
    wx, dwx = axis(x0, lx, w)
    wgt = (wy.unsqueeze(-1) * wx.unsqueeze(-2)).view(k, n, 4)  # corner (a, c) = wy[a]·wx[c]
    base = (torch.arange(b, device=dev) * (h * w * g)).view(1, b, 1, 1, 1) + torch.arange(
        g, device=dev
    ).view(1, 1, 1, 1, g)
    row = (y0 * w + x0).long().view(k, b, h, w, g) * g + base  # (K, B, H, W, G) corner 00
    corner = torch.tensor([0, g, w * g, (w + 1) * g], device=dev)
    idx = (row.view(k, n, 1) + corner).clamp_(0, n - 1)
    return idx, wgt, wy, wx, dwy, dwx


def _sample(rows: torch.Tensor, idx: torch.Tensor, wgt: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``(NG, C/G)``: each row is the ``wgt``-weighted sum of 4 corner rows."""
    return F.embedding_bag(idx, rows, per_sample_weights=wgt, mode="sum")


def _mix(s: torch.Tensor, w_k: torch.Tensor, cg: int) -> torch.Tensor:
    """``s (N, C_in)`` times ``w_k (C_out, C_in/cg)`` with ``cg`` channel groups → ``(N, C_out)``."""
    n, c_in = s.shape
    c_out = w_k.shape[0]
    if w_k.shape[1] == 1 and c_out == c_in:  # depthwise: a per-channel scale
        return s * w_k[:, 0]
    # (N, cg, C_in/cg) x (cg, C_out/cg, C_in/cg) -> (N, cg, C_out/cg)
    out = torch.einsum("ngi,goi->ngo", s.view(n, cg, -1), w_k.view(cg, c_out // cg, -1))
    return out.reshape(n, c_out)


def _mix_grad_input(gy: torch.Tensor, w_k: torch.Tensor, cg: int, c_in: int) -> torch.Tensor:
    """Gradient of the samples ``(N, C_in)`` from ``gy (N, C_out)`` through :func:`_mix`."""
    n, c_out = gy.shape
    if w_k.shape[1] == 1 and c_out == c_in:
        return gy * w_k[:, 0]
    # (N, cg, C_out/cg) x (cg, C_out/cg, C_in/cg) -> (N, cg, C_in/cg)
    out = torch.einsum("ngo,goi->ngi", gy.view(n, cg, -1), w_k.view(cg, c_out // cg, -1))
    return out.reshape(n, c_in)


def _mix_grad_weight(gy: torch.Tensor, s: torch.Tensor, w_k: torch.Tensor, cg: int) -> torch.Tensor:
    """Gradient of ``w_k (C_out, C_in/cg)`` from ``gy (N, C_out)`` and samples ``s (N, C_in)``."""
    n, c_out = gy.shape
    if w_k.shape[1] == 1 and c_out == s.shape[1]:
        return (gy * s).sum(0).unsqueeze(1)
    # (N, cg, C_out/cg) x (N, cg, C_in/cg) -> (cg, C_out/cg, C_in/cg)
    out = torch.einsum("ngo,ngi->goi", gy.view(n, cg, -1), s.view(n, cg, -1))
    return out.reshape(c_out, -1)


def _rows(x: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B·H·W·G, C/G)`` rows (a view for channels-last input)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1] // groups).to(dtype)


class _DeformConv(torch.autograd.Function):
    """Saves only the inputs; backward recomputes the samples one kernel point at a time."""

    @staticmethod
    def forward(ctx, x, offset, weight, mask, ks, dil, groups, cg):  # type: ignore[override]
        b, c_in, h, w = x.shape
        acc = _acc_dtype(x.dtype)
        idx, wgt, *_ = _geometry(offset, b, groups, h, w, ks, dil, acc)
        if mask is not None:  # (B, G, K, H, W) -> (K, B, H, W, G) -> (K, NG, 1)
            m = mask.view(b, groups, -1, h, w).permute(2, 0, 3, 4, 1).reshape(-1, idx.shape[1], 1)
            wgt = wgt * m.to(acc)
        rows = _rows(x, groups, acc)
        wacc = weight.to(acc)
        y = torch.zeros(b * h * w, weight.shape[0], device=x.device, dtype=acc)
        depthwise = weight.shape[1] == 1 and weight.shape[0] == c_in
        for k in range(idx.shape[0]):
            s = _sample(rows, idx[k], wgt[k]).view(b * h * w, c_in)  # (N, C_in)
            if depthwise:
                y.addcmul_(s, wacc[:, 0, k])  # in place: no (N, C) temporary per point
            else:
                y += _mix(s, wacc[:, :, k], cg)
        ctx.save_for_backward(x, offset, weight, mask)
        ctx.conf = (ks, dil, groups, cg)
        # (N, C_out) -> (B, H, W, C_out) -> (B, C_out, H, W) with channels-last strides
        return y.view(b, h, w, -1).permute(0, 3, 1, 2).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, offset, weight, mask = ctx.saved_tensors
        ks, dil, groups, cg = ctx.conf
        need_x, need_off, need_w = ctx.needs_input_grad[:3]
        need_m = mask is not None and ctx.needs_input_grad[3]
        b, c_in, h, w = x.shape
        n_pix, cgrp = b * h * w, c_in // groups
        acc = _acc_dtype(x.dtype)
        idx, wgt, wy, wx, dwy, dwx = _geometry(offset, b, groups, h, w, ks, dil, acc)
        n = idx.shape[1]
        m = None
        if mask is not None:
            m = mask.view(b, groups, -1, h, w).permute(2, 0, 3, 4, 1).reshape(-1, n, 1).to(acc)
        rows = _rows(x, groups, acc)
        wacc = weight.to(acc)
        gy = gy.permute(0, 2, 3, 1).reshape(n_pix, -1).to(acc).contiguous()  # (N, C_out)
        gx = torch.zeros_like(rows) if need_x else None
        goff = torch.empty(2, *idx.shape[:2], device=x.device, dtype=acc) if need_off else None
        gm = torch.empty(idx.shape[:2], device=x.device, dtype=acc) if need_m else None
        gw = torch.zeros_like(wacc) if need_w else None
        if need_x:  # (K, NG, 4) -> (K, 4, NG): contiguous per-corner indices scatter faster
            idx_t, wgt_t = idx.transpose(1, 2).contiguous(), wgt.transpose(1, 2).contiguous()
        bags = torch.arange(0, 4 * n, 4, device=x.device)
        bag_of = torch.arange(n, device=x.device).repeat_interleave(4)
        for k in range(idx.shape[0]):
            if need_w or need_m:
                s = _sample(rows, idx[k], wgt[k])  # unmodulated (NG, C/G)
                if need_m:
                    gs_mod = _mix_grad_input(gy, wacc[:, :, k], cg, c_in).reshape(n, cgrp)
                    gm[k] = (gs_mod * s).sum(-1)
                if need_w:
                    sm = (s if m is None else s * m[k]).view(n_pix, c_in)
                    gw[:, :, k] = _mix_grad_weight(gy, sm, wacc[:, :, k], cg)
            if not (need_x or need_off):
                continue
            gs = _mix_grad_input(gy, wacc[:, :, k], cg, c_in).reshape(n, cgrp)  # (NG, C/G)
            if m is not None:
                gs = gs * m[k]
            if need_off:
                # d sample / d corner weight = corner value: (NG, 4) -> (NG, 2, 2) by (row, col)
                gc = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    gs, rows, idx[k].reshape(-1), bags, bag_of, 0
                ).view(n, 2, 2)
                goff[0, k] = (gc * (dwy[k].unsqueeze(-1) * wx[k].unsqueeze(-2))).sum((1, 2))
                goff[1, k] = (gc * (wy[k].unsqueeze(-1) * dwx[k].unsqueeze(-2))).sum((1, 2))
            if need_x:
                for c in range(4):  # scatter the gradient to the four corners
                    gx.index_add_(0, idx_t[k, c], gs * wgt_t[k, c].unsqueeze(1))
        grad_x = grad_off = grad_w = grad_m = None
        if gx is not None:  # (B·H·W·G, C/G) -> (B, H, W, C) -> (B, C, H, W)
            grad_x = gx.view(b, h, w, c_in).permute(0, 3, 1, 2).to(x.dtype)
        if goff is not None:  # (2, K, B, H, W, G) -> (B, G, K, 2, H, W)
            goff = goff.view(2, -1, b, h, w, groups).permute(2, 5, 1, 0, 3, 4)
            grad_off = goff.reshape(offset.shape).to(offset.dtype)
        if gw is not None:
            grad_w = gw.to(weight.dtype)
        if gm is not None:  # (K, B, H, W, G) -> (B, G, K, H, W)
            gm = gm.view(-1, b, h, w, groups).permute(1, 4, 0, 2, 3)
            grad_m = gm.reshape(mask.shape).to(mask.dtype)
        return grad_x, grad_off, grad_w, grad_m, None, None, None, None


def deform_conv_reference(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kernel_size: int,
    dilation: int = 1,
) -> torch.Tensor:
    """Deformable convolution following the contract of :mod:`arlkit.ops`.

    Args:
        x: features ``(B, C_in, H, W)``, any strides.
        offset: ``(B, 2·G·K, H, W)`` pixel offsets, ``view(B, G, K, 2, H, W)``, ``Δy`` first.
        weight: ``(C_out, C_in // channel_groups, K)`` per-point weights.
        mask: optional ``(B, G·K, H, W)`` modulation.
        kernel_size: odd kernel side ``ks``; ``K = ks²``.
        dilation: spacing of the regular kernel grid, in pixels.

    Returns:
        ``(B, C_out, H, W)`` in the dtype of ``x`` (channels-last strides).

    Raises:
        ConfigError: shapes do not follow the contract.
    """
    groups, cg = check_deform_args(x, offset, weight, mask, kernel_size, dilation)
    return _DeformConv.apply(x, offset, weight, mask, kernel_size, dilation, groups, cg)
