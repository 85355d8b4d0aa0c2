"""Fused Triton kernels for deformable sampling (the ``triton`` deform op's engine).

The operator contract (shapes, offset layout, sampling convention) is in :mod:`arlkit.ops`.
Each kernel does in one pass what the reference does in several: sampling positions,
bilinear weights, the four-corner gather, modulation, the per-point weight ``w_k`` and the
sum over ``K``. Nothing ``K`` times the size of ``x`` is ever materialised, forward or
backward.

Layout. A program owns a tile of ``BLOCK_P`` output pixels (flattened over ``B·H·W``) by
``BLOCK_C`` channels of one offset group, so the offsets of a pixel are loaded once per
kernel point and broadcast over channels, and the gathers run along the channel axis. With
channels-last ``x`` (what ``(B, N, C)`` tokens viewed as ``(B, C, H, W)`` already are) each
corner of each pixel is one contiguous row of ``C/G`` values: coalesced, vectorised loads.
Every tensor is addressed through its strides, so any layout is correct; on CUDA a
non-channels-last ``x`` is copied to channels-last first. Outputs are channels-last.

Two kernel families:

* depthwise (``weight (C, 1, K)``): elementwise FMA per channel;
* grouped / full mixing (``weight (C_out, C_in/cg, K)``): an implicit GEMM, ``tl.dot`` of the
  sampled tile ``(BLOCK_P, BLOCK_C)`` with the weight tile of each kernel point.

Backward. One program per (pixel block, offset group) loops over all channels of its group,
so ``∂/∂offset`` and ``∂/∂mask`` (sums over the group's channels) are written directly,
without atomics; ``∂/∂weight`` (a reduction over all pixels) is added atomically. ``∂/∂x`` is
the adjoint of the sampling, a scatter to the four corners of every sample, done one of
two ways:

* *dense* (depthwise, images of at most 1024 pixels — every ViT grid): one program owns a
  block of pixels ``q`` of one image and a channel block and computes
  ``∂x[q] = Σ_k w_k · Σ_p A_k[q, p] · gy[p]`` with the sparse sampling matrix ``A_k`` built
  tile by tile in registers and applied with ``tl.dot`` (tiles no sample reaches are
  skipped). No atomics, no float32 buffer, written once in ``x``'s dtype, deterministic;
* *scatter* (otherwise): atomics into a float32 (float64 for float64 inputs) buffer.

With ``deterministic=True`` the atomics add *fixed-point int64* values instead (a
power-of-two scale derived from a bound on the sum, so nothing overflows), which makes the
result independent of the order in which programs run: bitwise reproducible, with a
precision of at least float32 per contribution and an exact sum.

Accumulation is float32 for float16/bfloat16/float32 inputs and float64 for float64 ones.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from arlkit.errors import ConfigError
from arlkit.ops.reference import check_deform_args

__all__ = ["TUNING", "deform_backward", "deform_forward", "interpreting"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, hf, wf, pm,
              K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr,
              HAS_MASK: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Sampling position ``(py, px)`` and modulation ``m`` of point ``k``, group ``g``; ``[P]``."""
    ch = (g * K + k) * 2
    dy = tl.load(off_ptr + ob + ch * so_c, mask=pm, other=0.0).to(ACC)
    dx = tl.load(off_ptr + ob + (ch + 1) * so_c, mask=pm, other=0.0).to(ACC)
    py = hf + ((k // KS - (KS - 1) // 2) * DIL) + dy
    px = wf + ((k % KS - (KS - 1) // 2) * DIL) + dx
    if HAS_MASK:
        m = tl.load(mask_ptr + mb + (g * K + k) * sm_c, mask=pm, other=0.0).to(ACC)
    else:
        m = tl.full(py.shape, 1.0, ACC)
    return py, px, m


@triton.jit
def _corners(py, px, H, W, pm):
    """Top-left corner, fractional parts and in-image flags of the four bilinear corners."""
    # Points further than one pixel outside sample only zeros; clamping keeps them there
    # (value and derivatives stay 0) while keeping the integer conversion in range. A NaN
    # position (NaN != NaN) goes outside explicitly: what max/min make of NaN is unspecified.
    py = tl.where(py == py, py, -2.0)
    px = tl.where(px == px, px, -2.0)
    py = tl.minimum(tl.maximum(py, -2.0), H + 1.0)
    px = tl.minimum(tl.maximum(px, -2.0), W + 1.0)
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    iy0 = pm & (y0 >= 0) & (y0 < H)
    iy1 = pm & (y0 + 1 >= 0) & (y0 + 1 < H)
    ix0 = (x0 >= 0) & (x0 < W)
    ix1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    return y0, x0, py - y0f, px - x0f, iy0 & ix0, iy0 & ix1, iy1 & ix0, iy1 & ix1


@triton.jit
def _gather4(ptr, base, cofs, y0, x0, s_h, s_w, m00, m01, m10, m11, cm, ACC: tl.constexpr):
    """The four corner tiles ``[P, C]`` of ``ptr`` (zero outside the image)."""
    r00 = base + y0 * s_h + x0 * s_w
    a = r00[:, None] + cofs[None, :]
    c = cm[None, :]
    v00 = tl.load(ptr + a, mask=m00[:, None] & c, other=0.0).to(ACC)
    v01 = tl.load(ptr + a + s_w, mask=m01[:, None] & c, other=0.0).to(ACC)
    v10 = tl.load(ptr + a + s_h, mask=m10[:, None] & c, other=0.0).to(ACC)
    v11 = tl.load(ptr + a + s_h + s_w, mask=m11[:, None] & c, other=0.0).to(ACC)
    return v00, v01, v10, v11


@triton.jit
def _accumulate(ptr, val, mask, scale, DET: tl.constexpr):
    """Atomic ``*ptr += val`` (float, or int64 fixed point ``val·scale`` when DET)."""
    if DET:  # fixed point: integer addition is associative, so the order does not matter
        tl.atomic_add(ptr, (val * scale).to(tl.int64), mask=mask, sem="relaxed")
    else:
        tl.atomic_add(ptr, val, mask=mask, sem="relaxed")


@triton.jit
def _scatter4(ptr, base, c, y0, x0, W, C, t, w00, w01, w10, w11, m00, m01, m10, m11, cm, scale,
              DET: tl.constexpr):  # fmt: skip
    """Add ``t·w_corner`` into the ``(B, H, W, C)`` buffer ``ptr`` at the four corners."""
    a = (base + (y0 * W + x0).to(tl.int64) * C)[:, None] + c[None, :]
    cc = cm[None, :]
    _accumulate(ptr + a, t * w00[:, None], m00[:, None] & cc, scale, DET)
    _accumulate(ptr + a + C, t * w01[:, None], m01[:, None] & cc, scale, DET)
    _accumulate(ptr + a + W * C, t * w10[:, None], m10[:, None] & cc, scale, DET)
    _accumulate(ptr + a + (W + 1) * C, t * w11[:, None], m11[:, None] & cc, scale, DET)


@triton.jit
def _pixels(pid, NP, H, W, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Pixel block ``pid`` of the flattened ``B·H·W``: in-range flags, ``b``, ``h``, ``w``."""
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    hw = p % (H * W)
    h = hw // W
    w = hw % W
    return p < NP, (p // (H * W)).to(tl.int64), h, w, h.to(ACC), w.to(ACC)


@triton.jit
def _dw_fwd(x_ptr, off_ptr, mask_ptr, w_ptr, y_ptr, NP, H, W, CG,
            sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w,
            sw_o, sw_k, sy_b, sy_c, sy_h, sy_w,
            K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr, HAS_MASK: tl.constexpr,
            ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """Depthwise forward. Grid: (pixel blocks, G · channel blocks per group)."""
    pm, b, h, w, hf, wf = _pixels(tl.program_id(0), NP, H, W, BLOCK_P, ACC)
    n_cb = tl.cdiv(CG, BLOCK_C)
    g = tl.program_id(1) // n_cb
    cl = (tl.program_id(1) % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cl < CG
    c = g * CG + cl
    ob = b * so_b + h * so_h + w * so_w
    mb = b * sm_b + h * sm_h + w * sm_w
    acc = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    for k in range(K):
        py, px, m = _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, hf, wf, pm,
                              K, KS, DIL, HAS_MASK, ACC)  # fmt: skip
        y0, x0, ly, lx, m00, m01, m10, m11 = _corners(py, px, H, W, pm)
        v00, v01, v10, v11 = _gather4(x_ptr, b * sx_b, c * sx_c, y0, x0, sx_h, sx_w,
                                      m00, m01, m10, m11, cm, ACC)  # fmt: skip
        hy = (1.0 - ly) * m  # modulation folded into the [P] corner weights
        ly = ly * m
        s = (hy * (1.0 - lx))[:, None] * v00 + (hy * lx)[:, None] * v01
        s += (ly * (1.0 - lx))[:, None] * v10 + (ly * lx)[:, None] * v11
        wk = tl.load(w_ptr + c * sw_o + k * sw_k, mask=cm, other=0.0).to(ACC)
        acc += s * wk[None, :]
    dst = (b * sy_b + h * sy_h + w * sy_w)[:, None] + (c * sy_c)[None, :]
    tl.store(y_ptr + dst, acc.to(y_ptr.dtype.element_ty), mask=pm[:, None] & cm[None, :])


@triton.jit
def _dw_bwd(x_ptr, off_ptr, mask_ptr, w_ptr, gy_ptr, gx_ptr, goff_ptr, gm_ptr, gw_ptr, scale_ptr,
            NP, H, W, C, CG, sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w,
            sm_b, sm_c, sm_h, sm_w, sw_o, sw_k, sg_b, sg_c, sg_h, sg_w,
            sgo_b, sgo_c, sgo_h, sgo_w, sgm_b, sgm_c, sgm_h, sgm_w,
            K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr, HAS_MASK: tl.constexpr,
            DET: tl.constexpr, SCATTER_X: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
            BLOCK_C: tl.constexpr):  # fmt: skip
    """Depthwise backward (∂offset, ∂mask, ∂weight; ∂x if SCATTER_X). Grid: (pixel blocks, G)."""
    pm, b, h, w, hf, wf = _pixels(tl.program_id(0), NP, H, W, BLOCK_P, ACC)
    g = tl.program_id(1)
    ob = b * so_b + h * so_h + w * so_w
    mb = b * sm_b + h * sm_h + w * sm_w
    gyb = b * sg_b + h * sg_h + w * sg_w
    gxb = b * H * W * C
    x_scale = 1.0
    w_scale = 1.0
    if DET:
        x_scale = tl.load(scale_ptr)
        w_scale = tl.load(scale_ptr + 1)
    for k in range(K):
        py, px, m = _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, hf, wf, pm,
                              K, KS, DIL, HAS_MASK, ACC)  # fmt: skip
        y0, x0, ly, lx, m00, m01, m10, m11 = _corners(py, px, H, W, pm)
        hy = 1.0 - ly
        hx = 1.0 - lx
        gdy = tl.zeros((BLOCK_P,), ACC)
        gdx = tl.zeros((BLOCK_P,), ACC)
        gmk = tl.zeros((BLOCK_P,), ACC)
        for c0 in range(0, CG, BLOCK_C):
            cl = c0 + tl.arange(0, BLOCK_C)
            cm = cl < CG
            c = g * CG + cl
            gy = tl.load(gy_ptr + gyb[:, None] + (c * sg_c)[None, :],
                         mask=pm[:, None] & cm[None, :], other=0.0).to(ACC)  # fmt: skip
            v00, v01, v10, v11 = _gather4(x_ptr, b * sx_b, c * sx_c, y0, x0, sx_h, sx_w,
                                          m00, m01, m10, m11, cm, ACC)  # fmt: skip
            t = gy * tl.load(w_ptr + c * sw_o + k * sw_k, mask=cm, other=0.0).to(ACC)[None, :]
            s = (hy * hx)[:, None] * v00 + (hy * lx)[:, None] * v01
            s += (ly * hx)[:, None] * v10 + (ly * lx)[:, None] * v11
            gmk += tl.sum(t * s, 1)
            gdy += tl.sum(t * (hx[:, None] * (v10 - v00) + lx[:, None] * (v11 - v01)), 1)
            gdx += tl.sum(t * (hy[:, None] * (v01 - v00) + ly[:, None] * (v11 - v10)), 1)
            _accumulate(gw_ptr + c * K + k, tl.sum(gy * s * m[:, None], 0), cm, w_scale, DET)
            if SCATTER_X:
                _scatter4(gx_ptr, gxb, c, y0, x0, W, C, t * m[:, None], hy * hx, hy * lx,
                          ly * hx, ly * lx, m00, m01, m10, m11, cm, x_scale, DET)  # fmt: skip
        dst = goff_ptr + b * sgo_b + h * sgo_h + w * sgo_w + (g * K + k) * 2 * sgo_c
        tl.store(dst, (gdy * m).to(goff_ptr.dtype.element_ty), mask=pm)
        tl.store(dst + sgo_c, (gdx * m).to(goff_ptr.dtype.element_ty), mask=pm)
        if HAS_MASK:
            dst = gm_ptr + b * sgm_b + h * sgm_h + w * sgm_w + (g * K + k) * sgm_c
            tl.store(dst, gmk.to(gm_ptr.dtype.element_ty), mask=pm)


@triton.jit
def _dw_bwd_x_dense(off_ptr, mask_ptr, w_ptr, gy_ptr, gx_ptr, H, W, G, CG,
                    so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w, sw_o, sw_k,
                    sg_b, sg_c, sg_h, sg_w, sx_b, sx_c, sx_h, sx_w,
                    K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr, HAS_MASK: tl.constexpr,
                    ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """``∂x`` without atomics: one program owns pixels ``q`` of one image and channel block.

    ``∂x[q, c] = Σ_k w[c, k] · Σ_p A_k[q, p] · gy[p, c]`` where ``A_k[q, p]`` is the bilinear
    weight (times the mask) with which point ``k`` of pixel ``p`` samples pixel ``q``: a
    one-hot-weighted ``(BLOCK_Q, BLOCK_Q) × (BLOCK_Q, BLOCK_C)`` product per source block,
    skipped when no sample of the source block lands in the program's pixels. With half
    inputs ``A`` is split into two half-precision terms (hi + lo) so it keeps ~16 bits.
    """
    HW = H * W
    q0 = tl.program_id(0) * BLOCK_Q
    q = q0 + tl.arange(0, BLOCK_Q)
    n_cb = tl.cdiv(CG, BLOCK_C)
    g = (tl.program_id(1) // n_cb) % G
    b = (tl.program_id(1) // (n_cb * G)).to(tl.int64)
    cl = (tl.program_id(1) % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cl < CG
    c = g * CG + cl
    acc = tl.zeros((BLOCK_Q, BLOCK_C), ACC)
    for p0 in range(0, HW, BLOCK_Q):
        p = p0 + tl.arange(0, BLOCK_Q)
        pm = p < HW
        h = p // W
        w = p % W
        gy = tl.load(gy_ptr + (b * sg_b + h * sg_h + w * sg_w)[:, None] + (c * sg_c)[None, :],
                     mask=pm[:, None] & cm[None, :], other=0.0).to(DOT)  # fmt: skip
        ob = b * so_b + h * so_h + w * so_w
        mb = b * sm_b + h * sm_h + w * sm_w
        for k in range(K):
            py, px, m = _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, h.to(ACC),
                                  w.to(ACC), pm, K, KS, DIL, HAS_MASK, ACC)  # fmt: skip
            y0, x0, ly, lx, m00, m01, m10, m11 = _corners(py, px, H, W, pm)
            i00 = y0 * W + x0  # pixel index of the top-left corner
            lo = tl.min(tl.where(m00 | m01, i00, HW), 0)
            lo = tl.minimum(lo, tl.min(tl.where(m10 | m11, i00 + W, HW), 0))
            hi = tl.max(tl.where(m11 | m10, i00 + W + 1, -1), 0)
            hi = tl.maximum(hi, tl.max(tl.where(m01 | m00, i00 + 1, -1), 0))
            if (lo < q0 + BLOCK_Q) & (hi >= q0):
                hy = (1.0 - ly) * m
                ly = ly * m
                w00 = tl.where(m00, hy * (1.0 - lx), 0.0)[None, :]  # validity folded in, per p
                w01 = tl.where(m01, hy * lx, 0.0)[None, :]
                w10 = tl.where(m10, ly * (1.0 - lx), 0.0)[None, :]
                w11 = tl.where(m11, ly * lx, 0.0)[None, :]
                d = q[:, None] - i00[None, :]  # (Q, P): which corner of p's sample is q
                a = tl.where(d == 0, w00, 0.0) + tl.where(d == 1, w01, 0.0)
                a += tl.where(d == W, w10, 0.0) + tl.where(d == W + 1, w11, 0.0)
                if SPLIT:
                    a_hi = a.to(DOT)
                    t = tl.dot(a_hi, gy, out_dtype=ACC)
                    t = tl.dot((a - a_hi.to(ACC)).to(DOT), gy, t, out_dtype=ACC)
                else:
                    t = tl.dot(a.to(DOT), gy, input_precision=PREC, out_dtype=ACC)
                wk = tl.load(w_ptr + c * sw_o + k * sw_k, mask=cm, other=0.0).to(ACC)
                acc += t * wk[None, :]
    qh = q // W
    qw = q % W
    dst = (b * sx_b + qh * sx_h + qw * sx_w)[:, None] + (c * sx_c)[None, :]
    tl.store(gx_ptr + dst, acc.to(gx_ptr.dtype.element_ty), mask=(q < HW)[:, None] & cm[None, :])


@triton.jit
def _grp_fwd(x_ptr, off_ptr, mask_ptr, w_ptr, y_ptr, NP, H, W, CG, CPG, OPG, SEG,
             sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w, sm_b, sm_c, sm_h, sm_w,
             sw_o, sw_c, sw_k, sy_b, sy_c, sy_h, sy_w,
             K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr, HAS_MASK: tl.constexpr,
             ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, BLOCK_P: tl.constexpr,
             BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr):  # fmt: skip
    """Grouped / full-mixing forward. Grid: (pixel blocks, channel groups · output blocks)."""
    pm, b, h, w, hf, wf = _pixels(tl.program_id(0), NP, H, W, BLOCK_P, ACC)
    n_ob = tl.cdiv(OPG, BLOCK_O)
    cg = tl.program_id(1) // n_ob
    ol = (tl.program_id(1) % n_ob) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = ol < OPG
    o = cg * OPG + ol
    ob = b * so_b + h * so_h + w * so_w
    mb = b * sm_b + h * sm_h + w * sm_w
    acc = tl.zeros((BLOCK_P, BLOCK_O), ACC)
    # A segment of SEG = gcd(C/G, C_in/cg) channels lies in one offset group and one channel group.
    for s0 in range(0, CPG, SEG):
        g = (cg * CPG + s0) // CG
        for k in range(K):
            py, px, m = _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, hf, wf, pm,
                                  K, KS, DIL, HAS_MASK, ACC)  # fmt: skip
            y0, x0, ly, lx, m00, m01, m10, m11 = _corners(py, px, H, W, pm)
            hy = (1.0 - ly) * m
            ly = ly * m
            for c0 in range(0, SEG, BLOCK_C):
                cr = s0 + c0 + tl.arange(0, BLOCK_C)  # channel index inside the channel group
                cm = cr < s0 + SEG
                v00, v01, v10, v11 = _gather4(x_ptr, b * sx_b, (cg * CPG + cr) * sx_c, y0, x0,
                                              sx_h, sx_w, m00, m01, m10, m11, cm, ACC)  # fmt: skip
                s = (hy * (1.0 - lx))[:, None] * v00 + (hy * lx)[:, None] * v01
                s += (ly * (1.0 - lx))[:, None] * v10 + (ly * lx)[:, None] * v11
                wt = tl.load(w_ptr + o[None, :] * sw_o + cr[:, None] * sw_c + k * sw_k,
                             mask=cm[:, None] & om[None, :], other=0.0)  # (C, O)  # fmt: skip
                acc = tl.dot(s.to(DOT), wt.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
    dst = (b * sy_b + h * sy_h + w * sy_w)[:, None] + (o * sy_c)[None, :]
    tl.store(y_ptr + dst, acc.to(y_ptr.dtype.element_ty), mask=pm[:, None] & om[None, :])


@triton.jit
def _grp_bwd(x_ptr, off_ptr, mask_ptr, w_ptr, gy_ptr, gx_ptr, goff_ptr, gm_ptr, gw_ptr, scale_ptr,
             NP, H, W, C, CG, CPG, OPG, SEG, sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w,
             sm_b, sm_c, sm_h, sm_w, sw_o, sw_c, sw_k, sg_b, sg_c, sg_h, sg_w,
             sgo_b, sgo_c, sgo_h, sgo_w, sgm_b, sgm_c, sgm_h, sgm_w,
             K: tl.constexpr, KS: tl.constexpr, DIL: tl.constexpr, HAS_MASK: tl.constexpr,
             DET: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr):  # fmt: skip
    """Grouped / full-mixing backward, all four gradients. Grid: (pixel blocks, G)."""
    pm, b, h, w, hf, wf = _pixels(tl.program_id(0), NP, H, W, BLOCK_P, ACC)
    g = tl.program_id(1)
    ob = b * so_b + h * so_h + w * so_w
    mb = b * sm_b + h * sm_h + w * sm_w
    gyb = b * sg_b + h * sg_h + w * sg_w
    gxb = b * H * W * C
    x_scale = 1.0
    w_scale = 1.0
    if DET:
        x_scale = tl.load(scale_ptr)
        w_scale = tl.load(scale_ptr + 1)
    for k in range(K):
        py, px, m = _position(off_ptr, mask_ptr, ob, mb, so_c, sm_c, g, k, hf, wf, pm,
                              K, KS, DIL, HAS_MASK, ACC)  # fmt: skip
        y0, x0, ly, lx, m00, m01, m10, m11 = _corners(py, px, H, W, pm)
        hy = 1.0 - ly
        hx = 1.0 - lx
        gdy = tl.zeros((BLOCK_P,), ACC)
        gdx = tl.zeros((BLOCK_P,), ACC)
        gmk = tl.zeros((BLOCK_P,), ACC)
        for s0 in range(0, CG, SEG):
            cg = (g * CG + s0) // CPG
            for c0 in range(0, SEG, BLOCK_C):
                c = g * CG + s0 + c0 + tl.arange(0, BLOCK_C)
                cm = c < g * CG + s0 + SEG
                cr = c - cg * CPG  # channel index inside the channel group
                v00, v01, v10, v11 = _gather4(x_ptr, b * sx_b, c * sx_c, y0, x0, sx_h, sx_w,
                                              m00, m01, m10, m11, cm, ACC)  # fmt: skip
                s = (hy * hx)[:, None] * v00 + (hy * lx)[:, None] * v01
                s += (ly * hx)[:, None] * v10 + (ly * lx)[:, None] * v11
                sm = (s * m[:, None]).to(DOT)
                t = tl.zeros((BLOCK_P, BLOCK_C), ACC)  # ∂L/∂sample = Σ_o gy·w[o, c, k]
                for o0 in range(0, OPG, BLOCK_O):
                    ol = o0 + tl.arange(0, BLOCK_O)
                    om = ol < OPG
                    o = cg * OPG + ol
                    gy = tl.load(gy_ptr + gyb[:, None] + (o * sg_c)[None, :],
                                 mask=pm[:, None] & om[None, :], other=0.0).to(DOT)  # fmt: skip
                    wt = tl.load(w_ptr + o[:, None] * sw_o + cr[None, :] * sw_c + k * sw_k,
                                 mask=om[:, None] & cm[None, :], other=0.0).to(DOT)  # fmt: skip
                    t = tl.dot(gy, wt, t, input_precision=PREC, out_dtype=ACC)
                    gw = tl.dot(tl.trans(gy), sm, input_precision=PREC, out_dtype=ACC)  # (O, C)
                    _accumulate(gw_ptr + (o[:, None] * CPG + cr[None, :]) * K + k, gw,
                                om[:, None] & cm[None, :], w_scale, DET)  # fmt: skip
                gmk += tl.sum(t * s, 1)
                gdy += tl.sum(t * (hx[:, None] * (v10 - v00) + lx[:, None] * (v11 - v01)), 1)
                gdx += tl.sum(t * (hy[:, None] * (v01 - v00) + ly[:, None] * (v11 - v10)), 1)
                _scatter4(gx_ptr, gxb, c, y0, x0, W, C, t * m[:, None], hy * hx, hy * lx,
                          ly * hx, ly * lx, m00, m01, m10, m11, cm, x_scale, DET)  # fmt: skip
        dst = goff_ptr + b * sgo_b + h * sgo_h + w * sgo_w + (g * K + k) * 2 * sgo_c
        tl.store(dst, (gdy * m).to(goff_ptr.dtype.element_ty), mask=pm)
        tl.store(dst + sgo_c, (gdx * m).to(goff_ptr.dtype.element_ty), mask=pm)
        if HAS_MASK:
            dst = gm_ptr + b * sgm_b + h * sgm_h + w * sgm_w + (g * K + k) * sgm_c
            tl.store(dst, gmk.to(gm_ptr.dtype.element_ty), mask=pm)


#: Overrides for benchmarks: block sizes ``block_p``, ``block_c``, ``block_o``, ``block_q``,
#: ``num_warps``, and ``dense_x`` (1/0: force the dense or the scatter ``∂x``); empty means
#: the built-in heuristic. Not part of the operator contract.
TUNING: dict[str, int] = {}

_TL = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def interpreting() -> bool:
    """Whether the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_dw_fwd, InterpretedFunction)


class _Plan:
    """Shapes, dtypes, block sizes and the (possibly channels-last) ``x`` of one call."""

    def __init__(self, x, offset, weight, mask, kernel_size: int, dilation: int) -> None:
        tensors = {"x": x, "offset": offset, "weight": weight, "mask": mask}
        for name, t in tensors.items():
            if t is not None and t.dtype not in _DTYPES:
                raise ConfigError(
                    f"deform op 'triton': {name} has dtype {t.dtype}; use float16, bfloat16, "
                    "float32 or float64"
                )
            if t is not None and t.device != x.device:
                raise ConfigError(
                    f"deform op 'triton': {name} is on {t.device} but x is on {x.device}; "
                    "move all inputs to one device"
                )
        self.groups, self.cgroups = check_deform_args(x, offset, weight, mask, kernel_size, dilation)
        if x.device.type != "cuda" and not interpreting():
            raise ConfigError(
                f"deform op 'triton': inputs are on {x.device}, but the Triton kernels run on "
                "CUDA (on CPU only under TRITON_INTERPRET=1, for tests); use the 'auto' deform "
                "op, which falls back to 'reference' off-GPU"
            )
        if x.is_cuda and x.shape[1] > 1 and x.stride(1) != 1:
            x = x.contiguous(memory_format=torch.channels_last)  # coalesced gathers along C
        self.x = x
        self.b, self.c, self.h, self.w = x.shape
        self.np = self.b * self.h * self.w
        self.c_out, self.cpg, self.k = weight.shape
        self.cg = self.c // self.groups  # channels per offset group
        self.opg = self.c_out // self.cgroups  # output channels per channel group
        self.seg = math.gcd(self.cg, self.cpg)
        self.depthwise = self.cpg == 1 and self.c_out == self.c
        wide = any(t is not None and t.dtype == torch.float64 for t in tensors.values())
        self.acc = torch.float64 if wide else torch.float32
        # tl.dot operands: the storage precision of x (float32 products are IEEE, not TF32)
        self.dot = self.acc if x.dtype in (torch.float32, torch.float64) else x.dtype
        interp = interpreting()
        if interp and self.dot == torch.bfloat16:  # the interpreter's tl.dot reads raw bf16 bits
            self.dot = torch.float32
        self.prec = "ieee" if self.dot in (torch.float32, torch.float64) else "tf32"
        if self.depthwise:
            self.bc = min(triton.next_power_of_2(self.cg), 64 if interp else 128)
            self.bo = 1
            self.bp = max(16, min(2048 // self.bc, 128))
        else:  # tl.dot needs every tile side >= 16
            self.bc = max(16, min(triton.next_power_of_2(self.seg), 32))
            self.bo = max(16, min(triton.next_power_of_2(self.opg), 64))
            self.bp = 32
        if interp:  # fewer, larger programs: the interpreter pays per program and per op
            self.bp = max(16, min(triton.next_power_of_2(self.np), 64))
        self.bp = TUNING.get("block_p", self.bp)
        self.bc = TUNING.get("block_c", self.bc)
        self.bo = TUNING.get("block_o", self.bo) if not self.depthwise else 1
        # ~8 tile elements per thread: ptxas (sm_90) puts the depthwise backward at 164
        # registers with 4 warps on a 32×64 tile and 80 with 8 warps
        self.warps = TUNING.get("num_warps", 8 if self.bp * self.bc >= 2048 else 4)
        # ∂x by per-image one-hot products instead of atomics (_dw_bwd_x_dense) when an image
        # has few pixels (ViT grids); the launch grid's second axis is limited to 65535.
        self.bq = TUNING.get("block_q", max(16, min(triton.next_power_of_2(self.h * self.w),
                                                    64 if interp else 32)))  # fmt: skip
        self.bcx = max(16, min(triton.next_power_of_2(self.cg), 64))
        self.n_bgc = self.b * self.groups * triton.cdiv(self.cg, self.bcx)
        dense = TUNING.get("dense_x", int(self.h * self.w <= 1024))
        self.dense_x = bool(dense) and self.depthwise and self.n_bgc < 65536
        self.split = self.dot in (torch.float16, torch.bfloat16)
        self.meta = dict(K=self.k, KS=kernel_size, DIL=dilation, HAS_MASK=mask is not None)

    def grid(self, per_pixel_block: int) -> tuple[int, int]:
        return (triton.cdiv(self.np, self.bp), per_pixel_block)


def _strides(t: torch.Tensor | None) -> tuple[int, ...]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())


def deform_forward(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
) -> torch.Tensor:
    """Deformable sampling, forward (one fused kernel launch).

    Args:
        x: ``(B, C_in, H, W)``, any strides (channels-last is the fast layout).
        offset: ``(B, 2·G·K, H, W)`` pixel offsets, ``Δy`` first (see :mod:`arlkit.ops`).
        weight: ``(C_out, C_in // channel_groups, K)``.
        mask: optional ``(B, G·K, H, W)`` modulation.
        kernel_size: odd kernel side; ``K = kernel_size²``.
        dilation: spacing of the regular grid, in pixels.

    Returns:
        ``(B, C_out, H, W)`` in ``x.dtype`` with channels-last strides.

    Raises:
        ConfigError: shapes break the contract, a dtype or device is unsupported.
    """
    plan = _Plan(x, offset, weight, mask, kernel_size, dilation)
    x = plan.x
    y = torch.empty((plan.b, plan.h, plan.w, plan.c_out), device=x.device, dtype=x.dtype)
    y = y.permute(0, 3, 1, 2)  # (B, H, W, C_out) -> (B, C_out, H, W), channels-last strides
    if y.numel() == 0:
        return y
    mk = offset if mask is None else mask  # never read when HAS_MASK is False
    args = (x, offset, mk, weight, y, plan.np, plan.h, plan.w, plan.cg)
    strides = (*x.stride(), *offset.stride(), *_strides(mask))
    acc = _TL[plan.acc]
    if plan.depthwise:
        grid = plan.grid(plan.groups * triton.cdiv(plan.cg, plan.bc))
        _dw_fwd[grid](*args, *strides, weight.stride(0), weight.stride(2), *y.stride(),
                      **plan.meta, ACC=acc, BLOCK_P=plan.bp, BLOCK_C=plan.bc, num_warps=plan.warps)  # fmt: skip
    else:
        grid = plan.grid(plan.cgroups * triton.cdiv(plan.opg, plan.bo))
        _grp_fwd[grid](*args, plan.cpg, plan.opg, plan.seg, *strides, *weight.stride(),
                       *y.stride(), **plan.meta, ACC=acc, DOT=_TL[plan.dot], PREC=plan.prec,
                       BLOCK_P=plan.bp, BLOCK_C=plan.bc, BLOCK_O=plan.bo, num_warps=plan.warps)  # fmt: skip
    return y


def _fixed_point_scales(
    grad: torch.Tensor, plan: _Plan, weight: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-of-two scales for the int64 accumulators of ``∂x`` and ``∂weight``.

    ``|Σ| ≤ bound`` for every accumulated sum (``∂x``: at most ``H·W·K`` point samples reach a
    pixel, each with bilinear weight ≤ 1 and ``|Σ_o gy·w·m| ≤ C_out/cg·max|gy|·max|w|·max|m|``;
    ``∂weight``: ``B·H·W`` terms ``|gy·m·sample| ≤ max|gy|·max|m|·max|x|``), so with the scale
    ``2^(61 − ⌈log2 bound⌉)`` no partial sum leaves int64. No host synchronisation.

    Returns:
        ``scales (2,)`` in the accumulation dtype and ``finite (2,)`` bool: False where a
        bound is not finite (then the gradient is NaN, as the float path would be).
    """

    def amax(t: torch.Tensor) -> torch.Tensor:
        return t.detach().abs().amax().to(torch.float64)

    gm = amax(grad) * (amax(mask) if mask is not None else 1.0)
    bounds = torch.stack(
        [gm * amax(weight) * plan.opg * plan.h * plan.w * plan.k, gm * amax(plan.x) * plan.np]
    )
    exps = 61.0 - torch.ceil(torch.log2(bounds))
    finite = torch.isfinite(bounds) & (exps >= -120.0)
    exps = torch.where(finite, exps.clamp(max=120.0), torch.zeros_like(exps))
    return torch.exp2(exps).to(plan.acc), finite


def deform_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`deform_forward` in all inputs (one fused kernel launch).

    Args:
        grad: ``(B, C_out, H, W)`` gradient of the output, any strides.
        x, offset, weight, mask, kernel_size, dilation: as in :func:`deform_forward`.
        deterministic: accumulate ``∂x`` and ``∂weight`` with fixed-point integer atomics, so
            the result is bitwise reproducible (costs two int64 buffers and a few reductions).

    Returns:
        ``(grad_x, grad_offset, grad_weight, grad_mask)`` in the dtypes of the inputs;
        ``grad_x`` is channels-last, ``grad_mask`` is None without a mask.

    Raises:
        ConfigError: as :func:`deform_forward`, or ``grad`` does not have the output's shape.
    """
    plan = _Plan(x, offset, weight, mask, kernel_size, dilation)
    x = plan.x
    if tuple(grad.shape) != (plan.b, plan.c_out, plan.h, plan.w) or grad.device != x.device:
        raise ConfigError(
            f"deform op 'triton': output gradient has shape {tuple(grad.shape)} on "
            f"{grad.device}, expected {(plan.b, plan.c_out, plan.h, plan.w)} on {x.device}"
        )
    buf = torch.int64 if deterministic else plan.acc
    shape_x = (plan.b, plan.h, plan.w, plan.c)
    if plan.dense_x:  # every element written once, in x's dtype
        gx = torch.empty(shape_x, device=x.device, dtype=x.dtype)
    else:
        gx = torch.zeros(shape_x, device=x.device, dtype=buf)
    gw = torch.zeros((plan.c_out, plan.cpg, plan.k), device=x.device, dtype=buf)
    goff = torch.empty_like(offset)
    gm = None if mask is None else torch.empty_like(mask)
    if plan.np and plan.c and plan.c_out:
        finite = None
        scales = gx  # never read unless DET
        if deterministic:
            scales, finite = _fixed_point_scales(grad, plan, weight, mask)
        mk = offset if mask is None else mask
        args = (x, offset, mk, weight, grad, gx, goff, goff if gm is None else gm, gw, scales)
        args += (plan.np, plan.h, plan.w, plan.c, plan.cg)
        strides = (*x.stride(), *offset.stride(), *_strides(mask))
        out_strides = (*grad.stride(), *goff.stride(), *_strides(gm))
        meta = dict(plan.meta, DET=deterministic, ACC=_TL[plan.acc], BLOCK_P=plan.bp,
                    num_warps=plan.warps)  # fmt: skip
        grid = plan.grid(plan.groups)
        if plan.depthwise:
            _dw_bwd[grid](*args, *strides, weight.stride(0), weight.stride(2), *out_strides,
                          **meta, SCATTER_X=not plan.dense_x, BLOCK_C=plan.bc)  # fmt: skip
        else:
            _grp_bwd[grid](*args, plan.cpg, plan.opg, plan.seg, *strides, *weight.stride(),
                           *out_strides, **meta, DOT=_TL[plan.dot], PREC=plan.prec,
                           BLOCK_C=plan.bc, BLOCK_O=plan.bo)  # fmt: skip
        if plan.dense_x:
            gx_view = gx.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
            grid = (triton.cdiv(plan.h * plan.w, plan.bq), plan.n_bgc)
            _dw_bwd_x_dense[grid](offset, mk, weight, grad, gx, plan.h, plan.w, plan.groups,
                                  plan.cg, *offset.stride(), *_strides(mask), weight.stride(0),
                                  weight.stride(2), *grad.stride(), *gx_view.stride(),
                                  **plan.meta, ACC=_TL[plan.acc], DOT=_TL[plan.dot],
                                  PREC=plan.prec, SPLIT=plan.split, BLOCK_Q=plan.bq,
                                  BLOCK_C=plan.bcx, num_warps=plan.warps)  # fmt: skip
        if finite is not None:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
            scales = scales.to(torch.float64)
            if not plan.dense_x:
                gx = torch.where(finite[0], gx.to(torch.float64) / scales[0], nan)
            gw = torch.where(finite[1], gw.to(torch.float64) / scales[1], nan)
    else:
        gx.zero_()
        goff.zero_()
        if gm is not None:
            gm.zero_()
    # (B, H, W, C) -> (B, C, H, W), channels-last strides
    grad_x = gx.to(x.dtype).permute(0, 3, 1, 2)
    return grad_x, goff, gw.to(weight.dtype), gm
