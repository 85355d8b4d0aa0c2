"""The Numba CPU kernels against the reference operator, gradcheck and their own promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from arlkit.errors import ConfigError
from arlkit.ops import deform_conv_reference, numba_deform
from arlkit.ops.numba_deform import deform_conv_numba

pytestmark = pytest.mark.skipif(
    not numba_deform.numba_available(),
    reason="numba is not installed (pip install 'arlkit[cpu]'); the kernels cannot run",
)


def _inputs(b, c, h, w, groups, ks, *, seed, dtype=torch.float64, scale=2.5, mask=False):
    gen = torch.Generator().manual_seed(seed)
    k = ks * ks
    x = torch.randn(b, c, h, w, generator=gen, dtype=dtype)
    # fractional offsets reaching well outside the image
    offset = torch.randn(b, 2 * groups * k, h, w, generator=gen, dtype=dtype) * scale
    weight = torch.randn(c, 1, k, generator=gen, dtype=dtype)
    m = torch.rand(b, groups * k, h, w, generator=gen, dtype=dtype) if mask else None
    return x, offset, weight, m


def _run(op, x, offset, weight, mask, ks, dil, grad):
    ins = [t.detach().clone().requires_grad_() for t in (x, offset, weight, mask) if t is not None]
    y = op(*ins[:3], ins[3] if mask is not None else None, kernel_size=ks, dilation=dil)
    return [y.detach(), *torch.autograd.grad(y, ins, grad)]


CASES = {  # b, c, h, w, groups, ks, mask, dilation
    "depthwise": (2, 6, 5, 7, 3, 3, False, 1),
    "mask+dil2": (2, 8, 6, 5, 2, 3, True, 2),
    "ks5-G4": (2, 8, 4, 5, 4, 5, False, 1),
    "ks1": (1, 4, 3, 3, 1, 1, True, 1),
    "one-group-wide": (1, 64, 4, 4, 1, 3, False, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numba_equals_reference_float64(case: str) -> None:
    b, c, h, w, groups, ks, use_mask, dil = CASES[case]
    x, offset, weight, mask = _inputs(b, c, h, w, groups, ks, seed=4, mask=use_mask)
    grad = torch.randn(b, c, h, w, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    got = _run(deform_conv_numba, x, offset, weight, mask, ks, dil, grad)
    want = _run(deform_conv_reference, x, offset, weight, mask, ks, dil, grad)
    for name, a, e in zip(["y", "x", "offset", "weight", "mask"], got, want):
        assert e.abs().sum() > 0, name
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")


def test_integer_and_border_positions_match_reference() -> None:
    # integer offsets put samples exactly on pixel centres, including the -1 and H-1 / W-1
    # edges where the validity branches switch; half-integers sit between them
    x, offset, weight, _ = _inputs(2, 6, 5, 5, 3, 3, seed=2)
    offset = torch.round(offset * 2) / 2
    assert (offset == 0).any() and (offset.frac() != 0).any()
    grad = torch.randn(2, 6, 5, 5, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    got = _run(deform_conv_numba, x, offset, weight, None, 3, 1, grad)
    want = _run(deform_conv_reference, x, offset, weight, None, 3, 1, grad)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_gradcheck_float64() -> None:
    x, offset, weight, mask = _inputs(1, 4, 3, 4, 2, 3, seed=3, scale=1.3, mask=True)
    offset = offset + 0.37  # keep sample positions off integer coordinates (kinks)
    args = [t.requires_grad_() for t in (x, offset, weight, mask)]

    def fn(x, o, w, m):
        return deform_conv_numba(x, o, w, m, kernel_size=3)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


def test_float32_channels_last_and_bfloat16() -> None:
    x, offset, weight, _ = _inputs(2, 6, 5, 5, 3, 3, seed=5, dtype=torch.float32)
    ref = deform_conv_reference(x, offset, weight, kernel_size=3)
    y = deform_conv_numba(x.contiguous(memory_format=torch.channels_last), offset, weight,
                          kernel_size=3)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref)
    xb, ob, wb = (t.bfloat16().requires_grad_() for t in (x, offset, weight))
    yb = deform_conv_numba(xb, ob, wb, kernel_size=3)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref, atol=0.1, rtol=0.05)
    yb.float().sum().backward()
    assert xb.grad.dtype == ob.grad.dtype == wb.grad.dtype == torch.bfloat16


def test_non_finite_positions_contribute_nothing() -> None:
    x, offset, weight, _ = _inputs(1, 4, 4, 4, 2, 3, seed=6, dtype=torch.float32)
    far = offset.clone()
    far.view(1, 2, 9, 2, 4, 4)[0, 1, 4, 0] = 1e6  # wholly outside: contributes nothing
    for bad in (float("nan"), float("inf"), -float("inf")):
        off = offset.clone()
        off.view(1, 2, 9, 2, 4, 4)[0, 1, 4, 0] = bad
        y = deform_conv_numba(x, off, weight, kernel_size=3)
        torch.testing.assert_close(y, deform_conv_numba(x, far, weight, kernel_size=3))


def test_results_do_not_depend_on_thread_count() -> None:
    x, offset, weight, mask = _inputs(3, 8, 6, 6, 2, 3, seed=8, dtype=torch.float32, mask=True)
    grad = torch.randn(3, 8, 6, 6, generator=torch.Generator().manual_seed(9))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(deform_conv_numba, x, offset, weight, mask, 3, 1, grad)
        torch.set_num_threads(2)
        two = _run(deform_conv_numba, x, offset, weight, mask, 3, 1, grad)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_mixing_weights_and_missing_numba_are_clear_errors(monkeypatch) -> None:
    x, offset, _, _ = _inputs(1, 4, 4, 4, 1, 3, seed=0)
    with pytest.raises(ConfigError, match="depthwise weights.*'reference'"):
        deform_conv_numba(x, offset, torch.zeros(4, 2, 9, dtype=x.dtype), kernel_size=3)
    from arlkit.registry import default_registries

    assert default_registries.deform_ops.build("numba") is deform_conv_numba
    monkeypatch.setattr(numba_deform, "_AVAILABLE", False)
    with pytest.raises(ConfigError, match=r"pip install 'arlkit\[cpu\]'"):
        default_registries.deform_ops.build("numba")


def test_auto_uses_numba_on_cpu_for_depthwise_and_reference_otherwise() -> None:
    from arlkit.ops.auto import AutoDeform, deform_conv_auto

    auto = AutoDeform()
    assert auto.use_numba
    x, offset, weight, _ = _inputs(1, 6, 5, 5, 3, 3, seed=1, dtype=torch.float32)
    assert torch.equal(
        auto(x, offset, weight, kernel_size=3), deform_conv_numba(x, offset, weight, kernel_size=3)
    )
    off = deform_conv_auto(x, offset, weight, kernel_size=3, use_numba=False)
    assert torch.equal(off, deform_conv_reference(x, offset, weight, kernel_size=3))
    mixing = torch.randn(6, 2, 9)  # grouped channel mixing: the reference op
    assert torch.equal(
        auto(x, offset, mixing, kernel_size=3),
        deform_conv_reference(x, offset, mixing, kernel_size=3),
    )


def test_torch_compile_traces_through_the_op() -> None:
    # the engine's train.compile wraps forward_features, which calls the op on the CPU
    x, offset, weight, _ = _inputs(2, 6, 5, 5, 3, 3, seed=11, dtype=torch.float32)

    def loss(x, o, w):
        return deform_conv_numba(x * 2, o, w, kernel_size=3).square().sum()

    ins = [t.clone().requires_grad_() for t in (x, offset, weight)]
    want = loss(*ins)
    want_grads = torch.autograd.grad(want, ins)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = compiled(*ins)
    torch.testing.assert_close(got, want)
    for a, e in zip(torch.autograd.grad(got, ins), want_grads):
        torch.testing.assert_close(a, e)


def test_custom_op_passes_torch_library_checks() -> None:
    x, offset, weight, mask = _inputs(1, 4, 4, 5, 2, 3, seed=12, dtype=torch.float32, mask=True)
    # offsets and mask arrive channels-last inside the block (outputs of convolutions)
    offset, mask = (t.contiguous(memory_format=torch.channels_last) for t in (offset, mask))
    args = [t.requires_grad_() for t in (x, offset, weight, mask)]
    for m in (args[3], None):
        torch.library.opcheck(numba_deform.deform_numba, (*args[:3], m, 3, 1, 2))


def test_fake_implementations_promise_the_real_strides() -> None:
    # Inductor asserts the strides its graph was compiled for: a fake that says
    # "like offset" (channels-last inside the block) while the kernel returns contiguous
    # gradients fails at run time in a compiled training step.
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, offset, weight, mask = _inputs(2, 6, 4, 5, 3, 3, seed=13, dtype=torch.float32, mask=True)
    x, offset, mask = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask))
    grad = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    calls = [
        (numba_deform.deform_numba, (x, offset, weight, mask, 3, 1, 3)),
        (numba_deform.deform_numba_backward, (grad, x, offset, weight, mask, 3, 1, 3)),
    ]
    for op, args in calls:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        real, fake = (r if isinstance(r, tuple) else (r,) for r in (real, fake))
        for r, f in zip(real, fake):
            assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op


def test_kernels_leave_pytorchs_thread_count_alone() -> None:
    # Numba's first call launches its OpenMP pool, which can set the OpenMP runtime PyTorch
    # shares to NUMBA_NUM_THREADS threads; the trainer's one thread beside a loader worker
    # must survive it. A fresh process: in this one the pool may have been launched already.
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from arlkit.ops.numba_deform import deform_conv_numba\n"
        "x = torch.randn(2, 4, 6, 6, requires_grad=True)\n"
        "off = torch.randn(2, 18, 6, 6); w = torch.randn(4, 1, 9)\n"
        "deform_conv_numba(x, off, w, None, kernel_size=3).sum().backward()\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1"
