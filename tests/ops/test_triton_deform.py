"""The fused Triton deform op against the reference, the contract and torch.library's checks.

Without a GPU the kernels run on CPU tensors under Triton's interpreter. ``TRITON_INTERPRET``
must be set before Triton is imported, so the Triton side runs once, in a subprocess (this
file run as a script), over every case; the comparisons run here. With CUDA the same cases,
plus full-size ones, run in this process on the GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arlkit.errors import ConfigError
from arlkit.ops.reference import deform_conv_reference

HAVE_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = HAVE_TRITON and torch.cuda.is_available()
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}  # fmt: skip
# max |triton − exact| / max |exact| (the interpreter rounds to bfloat16 by truncation: 2^-7)
TOL = {"float64": 1e-10, "float32": 2e-5, "float16": 3e-3, "bfloat16": 1.6e-2}


def _case(b, c, c_out, cpg, h, w, ks, g, *, dil=1, mask=False, dtype="float32", scale=2.0,
          layout="cl", det=False, scatter=False, nonfinite=False):  # fmt: skip
    # scatter=True: ∂x by atomics, not by the per-image one-hot products (default on small grids)
    # nonfinite=True: some offsets are NaN, +inf or -inf (such samples lie wholly outside)
    return dict(b=b, c=c, c_out=c_out, cpg=cpg, h=h, w=w, ks=ks, g=g, dil=dil, mask=mask,
                dtype=dtype, scale=scale, layout=layout, det=det, scatter=scatter,
                nonfinite=nonfinite)  # fmt: skip


# Sizes are odd on purpose: no pixel or channel count is a multiple of a block size.
CASES = {
    "dw_k3_g2_mask": _case(2, 6, 6, 1, 5, 7, 3, 2, mask=True),
    "dw_k5_dil2_far": _case(1, 4, 4, 1, 6, 5, 5, 2, dil=2, scale=6.0),  # many points outside
    "dw_k1_nchw": _case(2, 6, 6, 1, 3, 5, 1, 3, mask=True, layout="nchw"),
    "dw_width1": _case(2, 4, 4, 1, 5, 1, 3, 2, mask=True),  # corners 01 and 10 one pixel apart
    "dw_bf16": _case(2, 6, 6, 1, 5, 3, 3, 2, mask=True, dtype="bfloat16"),
    "dw_fp16": _case(1, 4, 4, 1, 5, 6, 3, 1, dtype="float16"),
    "dw_fp64": _case(1, 6, 6, 1, 4, 5, 3, 3, mask=True, dtype="float64"),
    "dw_det": _case(2, 6, 6, 1, 5, 4, 3, 2, mask=True, det=True),
    "dw_scatter": _case(2, 6, 6, 1, 5, 7, 3, 2, mask=True, scatter=True),
    "dw_scatter_det_bf16": _case(1, 6, 6, 1, 5, 4, 3, 3, dtype="bfloat16", det=True, scatter=True),
    "dw_scatter_far": _case(1, 4, 4, 1, 6, 5, 3, 2, dil=2, scale=6.0, scatter=True),
    "dw_multiplier": _case(1, 3, 6, 1, 4, 3, 3, 1),  # (C_out=2·C_in, 1, K): grouped path
    "grouped_seg1": _case(1, 6, 4, 3, 3, 5, 3, 3, mask=True),  # C/G=2, C_in/cg=3: gcd 1
    "full_mix": _case(2, 4, 5, 4, 3, 4, 3, 2, dil=2),
    "full_mix_det_bf16": _case(1, 4, 3, 4, 3, 3, 3, 2, mask=True, dtype="bfloat16", det=True),
    "dw_nonfinite": _case(1, 4, 4, 1, 4, 5, 3, 2, mask=True, nonfinite=True),
}
if ON_GPU:  # full size: one ViT-B block's shapes at a small batch
    CASES["vitb_bf16"] = _case(4, 768, 768, 1, 14, 14, 3, 12, dtype="bfloat16", scale=3.0)
    CASES["vitb_det"] = _case(4, 768, 768, 1, 14, 14, 3, 12, mask=True, det=True, scale=3.0)
    CASES["vitb_scatter_det"] = _case(4, 768, 768, 1, 14, 14, 3, 12, det=True, scatter=True)
    CASES["vitb_bf16_scatter"] = _case(4, 768, 768, 1, 14, 14, 3, 12, dtype="bfloat16",
                                       scale=3.0, scatter=True)  # fmt: skip
    CASES["vitb_full_mix"] = _case(2, 256, 256, 64, 14, 14, 3, 4, mask=True, scale=3.0)


def make_inputs(name: str) -> dict[str, torch.Tensor | None]:
    """Deterministic random inputs of one case (float64 values rounded to the case dtype)."""
    p = CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    dt, k = DTYPES[p["dtype"]], p["ks"] ** 2

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dt)

    b, c, h, w = p["b"], p["c"], p["h"], p["w"]
    x = rnd(b, h, w, c).permute(0, 3, 1, 2)  # (B, N, C) tokens viewed as a grid: channels-last
    if p["layout"] == "nchw":
        x = x.contiguous()
    mask = torch.rand(b, p["g"] * k, h, w, generator=gen, dtype=torch.float64).to(dt)
    offset = rnd(b, 2 * p["g"] * k, h, w, scale=p["scale"])
    if p["nonfinite"]:  # a Δy, a Δx and both of one point; the other points stay finite
        offset[0, 0, 1, 1], offset[0, 3, 2, 3] = float("nan"), float("inf")
        offset[0, 4, 0, 0], offset[0, 5, 0, 0] = float("-inf"), float("nan")
    return {
        "x": x,
        "offset": offset,
        "weight": rnd(p["c_out"], p["cpg"], k, scale=0.5),
        "mask": mask if p["mask"] else None,
        "grad": rnd(b, p["c_out"], h, w),
    }


def run_triton(inputs: dict, device: str) -> dict:
    """Run every case (and the library checks) through the Triton op; results on CPU."""
    from arlkit.ops import triton_deform
    from arlkit.ops.custom_op import TritonDeform, deform_conv_triton, deform_sample

    out: dict = {}
    for name, tensors in inputs.items():
        p = CASES[name]
        ins = {k: None if v is None else v.to(device).detach().clone().requires_grad_()
               for k, v in tensors.items()}  # fmt: skip
        grad = ins.pop("grad").detach()
        runs = []
        triton_deform.TUNING.clear()
        triton_deform.TUNING.update({"dense_x": 0} if p["scatter"] else {})
        for _ in range(2 if p["det"] else 1):
            for t in ins.values():
                if t is not None:
                    t.grad = None
            y = deform_conv_triton(**ins, kernel_size=p["ks"], dilation=p["dil"],
                                   deterministic=p["det"])  # fmt: skip
            y.backward(grad)
            runs.append([y.detach().cpu()] + [None if t is None else t.grad.cpu()
                                              for t in ins.values()])  # fmt: skip
        triton_deform.TUNING.clear()
        out[name] = {"y": runs[0][0], "grads": runs[0][1:]}
        if p["det"]:
            out[name]["bitwise"] = all(
                a is None or torch.equal(a, b) for a, b in zip(runs[0], runs[1])
            )
    t = {k: v.to(device) for k, v in inputs["dw_k3_g2_mask"].items()}
    ks = CASES["dw_k3_g2_mask"]["ks"]
    args = (t["x"], t["offset"], t["weight"], t["mask"])
    with torch.autocast(device, dtype=torch.bfloat16):
        out["autocast"] = deform_conv_triton(*args, kernel_size=ks).cpu()
    op = TritonDeform()

    def loss(x, offset, weight, mask):
        return (op(x, offset, weight, mask, kernel_size=ks) * t["grad"]).sum()

    leaves = [a.detach().clone().requires_grad_() for a in args]
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled(*leaves).backward()
    out["compiled_grads"] = [a.grad.cpu() for a in leaves]
    try:
        torch.library.opcheck(deform_sample, (*leaves, ks, 1, False))
        out["opcheck"] = "ok"
    except Exception as exc:  # reported by the test that reads it
        out["opcheck"] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory) -> dict:
    if not HAVE_TRITON:
        pytest.skip("triton is not importable here; the fused deform kernels cannot be tested")
    inputs = {name: make_inputs(name) for name in CASES}
    if ON_GPU:
        return run_triton(inputs, "cuda")
    tmp = tmp_path_factory.mktemp("triton_interpret")
    torch.save(inputs, tmp / "inputs.pt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp / "inputs.pt"), str(tmp / "results.pt")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return torch.load(tmp / "results.pt")


def _torchvision(x, offset, weight, mask=None, *, kernel_size: int, dilation: int = 1):
    from torchvision.ops import deform_conv2d

    kernel = weight.view(*weight.shape[:2], kernel_size, kernel_size)
    pad = dilation * (kernel_size - 1) // 2
    return deform_conv2d(x, offset, kernel, mask=mask, padding=pad, dilation=dilation)


IMPLS = {"reference": deform_conv_reference, "torchvision": _torchvision}


def _expected(name: str, impl: str = "reference") -> tuple[torch.Tensor, list]:
    """Output and gradients of ``impl`` in float64 on the case's (rounded) inputs."""
    t = make_inputs(name)
    p = CASES[name]
    ins = [None if t[k] is None else t[k].double().requires_grad_()
           for k in ("x", "offset", "weight", "mask")]  # fmt: skip
    y = IMPLS[impl](*ins, kernel_size=p["ks"], dilation=p["dil"])
    y.backward(t["grad"].double())
    return y.detach(), [None if a is None else a.grad for a in ins]


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual.double() - expected).abs().max() / scale).item()


@pytest.mark.parametrize(("name", "impl"), [
    (name, impl) for name in CASES for impl in IMPLS
    if not (CASES[name]["nonfinite"] and impl == "torchvision")  # its contract has no NaN
])
def test_forward_and_gradients_match(name: str, impl: str, triton_results: dict) -> None:
    got = triton_results[name]
    y, grads = _expected(name, impl)
    p = CASES[name]
    tol = TOL[p["dtype"]]
    assert got["y"].dtype == DTYPES[p["dtype"]] and got["y"].shape == y.shape
    assert _rel_err(got["y"], y) < tol, "output"
    for what, g, ref in zip(("x", "offset", "weight", "mask"), got["grads"], grads):
        if ref is None:
            assert g is None
            continue
        assert g.dtype == DTYPES[p["dtype"]] and g.shape == ref.shape, what
        assert _rel_err(g, ref) < tol, f"gradient of {what}"


def test_out_of_image_points_are_exercised() -> None:
    """The far case really samples outside the image (else it would not test zero padding)."""
    t = make_inputs("dw_k5_dil2_far")
    assert t["offset"].abs().max() > 2 * t["x"].shape[-1]


@pytest.mark.parametrize("name", [n for n, p in CASES.items() if p["det"]])
def test_deterministic_backward_is_bitwise_reproducible(name: str, triton_results: dict) -> None:
    assert triton_results[name]["bitwise"]


def _naive(x, offset, weight, mask, ks: int, dil: int) -> torch.Tensor:
    """The contract's formula, literally: loops over pixels, points and channels."""
    b_, c_in, h_, w_ = x.shape
    c_out, cpg, k_ = weight.shape
    g_ = offset.shape[1] // (2 * k_)
    opg = c_out // (c_in // cpg)
    xs, off, wt = x.tolist(), offset.tolist(), weight.tolist()
    ms = None if mask is None else mask.tolist()

    def pix(b, c, yy, xx):
        return xs[b][c][yy][xx] if 0 <= yy < h_ and 0 <= xx < w_ else 0.0

    y = torch.zeros(b_, c_out, h_, w_, dtype=torch.float64)
    for b in range(b_):
        for o in range(c_out):
            for hh in range(h_):
                for ww in range(w_):
                    acc = 0.0
                    for ci in range(cpg):
                        c = (o // opg) * cpg + ci
                        g = c // (c_in // g_)
                        for k in range(k_):
                            py = hh + (k // ks - (ks - 1) / 2) * dil + off[b][2 * (g * k_ + k)][hh][ww]
                            px = ww + (k % ks - (ks - 1) / 2) * dil + off[b][2 * (g * k_ + k) + 1][hh][ww]
                            y0, x0 = int(py // 1), int(px // 1)
                            ly, lx = py - y0, px - x0
                            s = ((1 - ly) * (1 - lx) * pix(b, c, y0, x0) + (1 - ly) * lx * pix(b, c, y0, x0 + 1)
                                 + ly * (1 - lx) * pix(b, c, y0 + 1, x0) + ly * lx * pix(b, c, y0 + 1, x0 + 1))  # fmt: skip
                            m = 1.0 if ms is None else ms[b][g * k_ + k][hh][ww]
                            acc += wt[o][ci][k] * m * s
                    y[b, o, hh, ww] = acc
    return y


@pytest.mark.parametrize("name", ["grouped_seg1", "dw_k5_dil2_far"])
def test_forward_matches_the_contract_formula(name: str, triton_results: dict) -> None:
    t, p = make_inputs(name), CASES[name]
    args = [None if t[k] is None else t[k].double() for k in ("x", "offset", "weight", "mask")]
    expected = _naive(*args, p["ks"], p["dil"])
    assert _rel_err(triton_results[name]["y"], expected) < TOL[p["dtype"]]


def test_autocast_runs_in_the_autocast_dtype(triton_results: dict) -> None:
    y = triton_results["autocast"]
    assert y.dtype == torch.bfloat16
    t = make_inputs("dw_k3_g2_mask")
    bf = [t[k].to(torch.bfloat16).double() for k in ("x", "offset", "weight", "mask")]
    expected = deform_conv_reference(*bf, kernel_size=3)  # the inputs were cast, like a conv's
    assert _rel_err(y, expected) < TOL["bfloat16"]


def test_compiled_fullgraph_matches_eager(triton_results: dict) -> None:
    eager = triton_results["dw_k3_g2_mask"]["grads"]
    for a, b in zip(triton_results["compiled_grads"], eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_library_opcheck(triton_results: dict) -> None:
    assert triton_results["opcheck"] == "ok", triton_results["opcheck"]


def test_shape_errors_and_devices() -> None:
    if not HAVE_TRITON:
        pytest.skip("triton is not importable here")
    from arlkit.ops.custom_op import deform_conv_triton
    from arlkit.ops.triton_deform import interpreting

    t = make_inputs("dw_k3_g2_mask")
    with pytest.raises(ConfigError, match="offset has 35 channels"):
        deform_conv_triton(t["x"], t["offset"][:, :35], t["weight"], kernel_size=3)
    if interpreting():  # TRITON_INTERPRET=1 in this very process: CPU tensors are accepted
        assert deform_conv_triton(t["x"], t["offset"], t["weight"], kernel_size=3).shape
    else:
        with pytest.raises(ConfigError, match="'auto'"):
            deform_conv_triton(t["x"], t["offset"], t["weight"], kernel_size=3)


def _compile_for_sm90(kernel, ptrs: dict[str, str], constexprs: dict) -> None:
    """Compile ``kernel`` ahead of time for an H100/H200 (sm_90) down to a cubin; no GPU needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    names = kernel.arg_names
    sig = {n: "constexpr" if n in constexprs else ptrs.get(n, "i32") for n in names}
    cx = {(names.index(n),): v for n, v in constexprs.items()}
    src = ASTSource(fn=kernel, signature=sig, constexprs=cx)
    assert "cubin" in compile(src, target=GPUTarget("cuda", 90, 32)).asm


def test_kernels_compile_for_the_gpu() -> None:
    """The interpreter does not run Triton's GPU code generation; this does (bf16, fp64 dots,
    int64 atomics of the deterministic path)."""
    if not HAVE_TRITON:
        pytest.skip("triton is not importable here")
    import triton.language as tl

    from arlkit.ops import triton_deform as T

    if T.interpreting():
        pytest.skip("TRITON_INTERPRET=1 in this process: the kernels are interpreted, not compiled")
    for dt, acc in (("bf16", tl.float32), ("fp64", tl.float64)):
        p = f"*{dt}"
        ins = {n: p for n in ("x_ptr", "off_ptr", "mask_ptr", "w_ptr", "y_ptr", "gy_ptr",
                              "goff_ptr", "gm_ptr")}  # fmt: skip
        dot = {"DOT": tl.bfloat16 if dt == "bf16" else tl.float64, "PREC": "ieee"}
        meta = dict(K=9, KS=3, DIL=1, HAS_MASK=True, ACC=acc)
        det = dict(ins, gx_ptr="*i64", gw_ptr="*i64", scale_ptr="*fp32")
        if dt == "bf16":
            _compile_for_sm90(T._dw_fwd, ins, dict(meta, BLOCK_P=32, BLOCK_C=64))
            _compile_for_sm90(T._dw_bwd, det, dict(meta, DET=True, SCATTER_X=True, BLOCK_P=32,
                                                   BLOCK_C=64))  # fmt: skip
            _compile_for_sm90(T._grp_bwd, det, dict(meta, **dot, DET=True, BLOCK_P=32,
                                                    BLOCK_C=16, BLOCK_O=32))  # fmt: skip
        _compile_for_sm90(T._dw_bwd_x_dense, dict(ins, gx_ptr=p),
                          dict(meta, **dot, SPLIT=dt == "bf16", BLOCK_Q=32, BLOCK_C=64))  # fmt: skip
        _compile_for_sm90(T._grp_fwd, ins, dict(meta, **dot, BLOCK_P=32, BLOCK_C=16, BLOCK_O=32))


def test_plugin_registers_triton_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from arlkit.ops.auto import AutoDeform
    from arlkit.ops.custom_op import TritonDeform
    from arlkit.plugins import PluginHost
    from arlkit.registry import Registries

    reg = Registries()
    PluginHost(reg, builtins=("arlkit.ops.plugin_triton",), entry_points=False).load()
    assert reg.deform_ops.names() == ["auto", "triton"]
    auto = reg.deform_ops.build("auto", {"deterministic": True})
    assert isinstance(auto, AutoDeform) and auto.deterministic is True
    with pytest.raises(ValueError):
        reg.deform_ops.build("triton", {"determinstic": True})
    if HAVE_TRITON:
        assert isinstance(reg.deform_ops.build("triton", {}), TritonDeform)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "triton" else real(n, *a))
    with pytest.raises(ConfigError, match="use deform_op 'auto'"):
        reg.deform_ops.build("triton", {})


def test_auto_is_the_reference_off_gpu() -> None:
    from arlkit.ops.auto import AutoDeform

    t = make_inputs("full_mix")
    ins = [t[k].clone().requires_grad_() for k in ("x", "offset", "weight")]
    ref = [t[k].clone().requires_grad_() for k in ("x", "offset", "weight")]
    y = AutoDeform()(*ins, kernel_size=3, dilation=2)
    y_ref = deform_conv_reference(*ref, kernel_size=3, dilation=2)
    assert torch.equal(y, y_ref)
    y.backward(t["grad"])
    y_ref.backward(t["grad"])
    for a, b in zip(ins, ref):
        assert torch.equal(a.grad, b.grad)


if __name__ == "__main__":  # the interpreter worker: python this_file.py inputs.pt results.pt
    torch.save(run_triton(torch.load(sys.argv[1]), "cpu"), Path(sys.argv[2]))
