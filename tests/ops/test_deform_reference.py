"""The reference deformable operator against convolutions, shifts, gradcheck and torchvision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arlkit.errors import ConfigError
from arlkit.ops import deform_conv_reference, deform_conv_torchvision


def _inputs(
    b: int,
    c: int,
    h: int,
    w: int,
    groups: int,
    ks: int,
    w_shape: tuple[int, ...],
    *,
    seed: int,
    dtype: torch.dtype = torch.float64,
    scale: float = 2.5,
    mask: bool = False,
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    k = ks * ks
    x = torch.randn(b, c, h, w, generator=gen, dtype=dtype)
    # fractional offsets reaching well outside the image (|Δ| up to ~3·scale pixels)
    offset = torch.randn(b, 2 * groups * k, h, w, generator=gen, dtype=dtype) * scale
    weight = torch.randn(*w_shape, generator=gen, dtype=dtype)
    m = torch.rand(b, groups * k, h, w, generator=gen, dtype=dtype) if mask else None
    return x, offset, weight, m


@pytest.mark.parametrize("ks,dilation,groups", [(3, 1, 1), (3, 2, 4), (5, 1, 2), (1, 1, 1)])
def test_zero_offsets_equal_depthwise_conv(ks: int, dilation: int, groups: int) -> None:
    x, offset, weight, _ = _inputs(2, 8, 6, 7, groups, ks, (8, 1, ks * ks), seed=0)
    y = deform_conv_reference(
        x, torch.zeros_like(offset), weight, kernel_size=ks, dilation=dilation
    )
    expected = F.conv2d(
        x, weight.view(8, 1, ks, ks), padding=dilation * (ks - 1) // 2, dilation=dilation, groups=8
    )
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (-3, 2), (7, 0)])
def test_integer_offsets_equal_shifted_input(dy: int, dx: int) -> None:
    x, _, _, _ = _inputs(2, 4, 5, 6, 1, 1, (4, 1, 1), seed=1)
    offset = torch.tensor([float(dy), float(dx)], dtype=x.dtype).view(1, 2, 1, 1).expand(2, 2, 5, 6)
    y = deform_conv_reference(x, offset, torch.ones(4, 1, 1, dtype=x.dtype), kernel_size=1)
    shifted = torch.zeros_like(x)  # y[h, w] = x[h + dy, w + dx], zero outside
    h, w = x.shape[-2:]
    src_h = slice(max(dy, 0), min(h + dy, h))
    dst_h = slice(max(-dy, 0), max(-dy, 0) + max(0, src_h.stop - src_h.start))
    src_w = slice(max(dx, 0), min(w + dx, w))
    dst_w = slice(max(-dx, 0), max(-dx, 0) + max(0, src_w.stop - src_w.start))
    shifted[..., dst_h, dst_w] = x[..., src_h, src_w]
    torch.testing.assert_close(y, shifted)


def test_integer_offsets_with_kernel_equal_conv_of_shifted_input() -> None:
    x, _, weight, _ = _inputs(1, 6, 8, 8, 2, 3, (6, 1, 9), seed=2)
    offset = torch.zeros(1, 2 * 2 * 9, 8, 8, dtype=x.dtype)
    offset.view(1, 2, 9, 2, 8, 8)[:, :, :, 0] = 2.0  # every point, both groups: two rows down
    y = deform_conv_reference(x, offset, weight, kernel_size=3)
    shifted = F.pad(x[..., 2:, :], (0, 0, 0, 2))  # x[h + 2, w], zero past the bottom
    expected = F.conv2d(shifted, weight.view(6, 1, 3, 3), padding=1, groups=6)
    # rows whose 3×3 window reaches the padding differ (the op reads real pixels there)
    torch.testing.assert_close(y[..., 1:5, :], expected[..., 1:5, :])


def test_gradcheck_float64() -> None:
    x, offset, weight, mask = _inputs(1, 2, 3, 4, 1, 3, (2, 1, 9), seed=3, scale=1.3, mask=True)
    offset = offset + 0.37  # keep sample positions off integer coordinates (kinks)
    args = [t.requires_grad_() for t in (x, offset, weight, mask)]

    def fn(x: torch.Tensor, o: torch.Tensor, w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return deform_conv_reference(x, o, w, m, kernel_size=3)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


def test_gradcheck_float64_groups_and_mixing() -> None:
    x, offset, weight, _ = _inputs(1, 4, 4, 5, 2, 3, (6, 2, 9), seed=7, scale=1.3)
    offset = offset + 0.37
    args = [t.requires_grad_() for t in (x, offset, weight)]
    assert torch.autograd.gradcheck(
        lambda x, o, w: deform_conv_reference(x, o, w, kernel_size=3, dilation=2),
        args,
        eps=1e-6,
        atol=1e-5,
        fast_mode=True,
    )


CASES = {
    "depthwise": (2, 6, 5, 7, 3, 3, (6, 1, 9), False, 1),
    "depthwise-mult2": (1, 4, 5, 5, 2, 3, (8, 1, 9), False, 1),
    "grouped+mask": (2, 6, 4, 6, 3, 3, (6, 2, 9), True, 1),
    "full+mask+dil2": (1, 4, 6, 6, 1, 3, (5, 4, 9), True, 2),
    "ks5-G4": (2, 8, 4, 5, 4, 5, (8, 1, 25), False, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_equals_torchvision(case: str) -> None:
    b, c, h, w, groups, ks, w_shape, use_mask, dil = CASES[case]
    x, offset, weight, mask = _inputs(b, c, h, w, groups, ks, w_shape, seed=4, mask=use_mask)
    inputs = [t.requires_grad_() for t in (x, offset, weight, mask) if t is not None]
    ya = deform_conv_reference(x, offset, weight, mask, kernel_size=ks, dilation=dil)
    yb = deform_conv_torchvision(x, offset, weight, mask, kernel_size=ks, dilation=dil)
    torch.testing.assert_close(ya, yb)
    grad = torch.randn_like(ya)
    for ga, gb in zip(torch.autograd.grad(ya, inputs, grad), torch.autograd.grad(yb, inputs, grad)):
        assert ga.abs().sum() > 0
        torch.testing.assert_close(ga, gb)


def test_channels_last_and_float32_match() -> None:
    x, offset, weight, _ = _inputs(2, 6, 5, 5, 3, 3, (6, 1, 9), seed=5, dtype=torch.float32)
    y = deform_conv_reference(x, offset, weight, kernel_size=3)
    y_cl = deform_conv_reference(
        x.contiguous(memory_format=torch.channels_last), offset, weight, kernel_size=3
    )
    torch.testing.assert_close(y, y_cl)
    torch.testing.assert_close(y, deform_conv_torchvision(x, offset, weight, kernel_size=3))


def test_bfloat16_close_to_float32() -> None:
    x, offset, weight, _ = _inputs(1, 8, 6, 6, 2, 3, (8, 1, 9), seed=6, dtype=torch.float32)
    ref = deform_conv_reference(x, offset, weight, kernel_size=3)
    xb, ob, wb = (t.bfloat16().requires_grad_() for t in (x, offset, weight))
    y = deform_conv_reference(xb, ob, wb, kernel_size=3)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(ob.grad.float()).all()


@pytest.mark.parametrize(
    "offset_shape,weight_shape,kernel_size",
    [
        ((1, 17, 4, 4), (4, 1, 9), 3),
        ((1, 18, 4, 5), (4, 1, 9), 3),
        ((1, 18, 4, 4), (4, 1, 4), 3),
        ((1, 18, 4, 4), (4, 1, 9), 2),
        ((1, 54, 4, 4), (4, 1, 9), 3),
    ],
)
def test_contract_violations_raise(
    offset_shape: tuple[int, ...], weight_shape: tuple[int, ...], kernel_size: int
) -> None:
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(ConfigError, match="deform op"):
        deform_conv_reference(
            x, torch.zeros(offset_shape), torch.zeros(weight_shape), kernel_size=kernel_size
        )


def test_registered_operators() -> None:
    from arlkit.registry import default_registries as reg

    assert {"reference", "torchvision"} <= set(reg.deform_ops.names())
    assert reg.deform_ops.build("reference") is deform_conv_reference
    assert reg.deform_ops.build("torchvision") is deform_conv_torchvision


@pytest.mark.parametrize("shape", [(0, 4, 3, 5), (2, 4, 0, 5)])
def test_empty_batch_or_grid_gives_empty_output_and_zero_gradients(shape) -> None:
    b, c, h, w = shape
    x, offset, weight, mask = _inputs(b, c, h, w, 2, 3, (c, 1, 9), seed=8, mask=True)
    ins = [t.requires_grad_() for t in (x, offset, weight, mask)]
    y = deform_conv_reference(*ins, kernel_size=3)
    assert y.shape == (b, c, h, w)
    grads = torch.autograd.grad(y.sum(), ins)
    for g, t in zip(grads, ins):
        assert g.shape == t.shape and not g.any()  # the weight's gradient: an empty sum


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_non_finite_offsets_sample_nothing(bad: float) -> None:
    # an overflowed (±inf) or NaN offset puts the sample wholly outside, as torchvision (for
    # ±inf) and the fused kernels do: it contributes nothing, and its gradients are 0
    x, offset, weight, mask = _inputs(1, 4, 4, 5, 2, 3, (4, 1, 9), seed=9, mask=True)
    far = offset.clone()
    far.view(1, 2, 9, 2, 4, 5)[0, 1, 4, 0, 2, 3] = 1e6
    off = offset.clone()
    off.view(1, 2, 9, 2, 4, 5)[0, 1, 4, 0, 2, 3] = bad
    ins = [t.requires_grad_() for t in (x, off, weight, mask)]
    y = deform_conv_reference(*ins, kernel_size=3)
    want = deform_conv_reference(x, far, weight, mask, kernel_size=3)
    torch.testing.assert_close(y, want)
    if bad != bad:  # NaN: torchvision's result is undefined (it casts floor(NaN) to int)
        want_tv = want
    else:
        want_tv = deform_conv_torchvision(x, off.detach(), weight, mask, kernel_size=3)
    torch.testing.assert_close(y, want_tv)
    grads = torch.autograd.grad(y.sum(), ins)
    assert all(torch.isfinite(g).all() for g in grads)
    goff = grads[1].view(1, 2, 9, 2, 4, 5)[0, 1, 4, :, 2, 3]
    assert not goff.any()
    assert grads[3].view(1, 2, 9, 4, 5)[0, 1, 4, 2, 3] == 0
