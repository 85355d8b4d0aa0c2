"""GradNormRatio: hypothesis properties, hand computations, warm-up, every-N, state."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.balancers import GradNormRatio
from arlkit.errors import ConfigError
from arlkit.losses import SpeckleGANLoss

SETTINGS = settings(max_examples=40, deadline=None)


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A shared parameter w and inputs of a reconstruction-like and an adversarial-like loss."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    x_ref = torch.randn(6, generator=g, dtype=torch.float64)
    x_adv = torch.randn(6, generator=g, dtype=torch.float64)
    return w, x_ref, x_adv


def _losses(w, x_ref, x_adv, a: float = 1.0, b: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "mim": a * ((w - x_ref) ** 2).sum(),
        "speckle_gan": b * F.softplus(-(w * x_adv).sum()),
    }


def _hand_lambda(w, x_ref, x_adv, a, b, eps, max_weight):
    losses = _losses(w, x_ref, x_adv, a, b)
    (g_ref,) = torch.autograd.grad(losses["mim"], w)
    (g_adv,) = torch.autograd.grad(losses["speckle_gan"], w)
    return min(max(g_ref.norm().item() / (g_adv.norm().item() + eps), 0.0), max_weight)


@given(seed=st.integers(0, 10_000), c=st.floats(1e-2, 1e2))
@SETTINGS
def test_scaling_both_losses_leaves_lambda_unchanged(seed: int, c: float) -> None:
    w, x_ref, x_adv = _problem(seed)
    bal = GradNormRatio(eps=0.0, max_weight=1e12)
    _, w1 = bal(_losses(w, x_ref, x_adv), w)
    _, w2 = bal(_losses(w, x_ref, x_adv, c, c), w)
    assert w2["lambda"] == pytest.approx(w1["lambda"], rel=1e-9)


@given(seed=st.integers(0, 10_000), c=st.floats(1e-2, 1e2))
@SETTINGS
def test_a_constant_factor_on_the_adaptive_loss_cancels(seed: int, c: float) -> None:
    """Why the engine refuses a recipe weight on the adaptive objective: the total's gradient
    is the same whatever constant multiplies ``L_adv`` (with ε = 0)."""
    w, x_ref, x_adv = _problem(seed)
    grads = []
    for b in (1.0, c):
        total, _ = GradNormRatio(eps=0.0, max_weight=1e12)(_losses(w, x_ref, x_adv, b=b), w)
        grads.append(torch.autograd.grad(total, w)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    assert GradNormRatio.cancels_weight_of == ("adaptive",)


@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 10.0), max_weight=st.floats(0.5, 50))
@SETTINGS
def test_scale_multiplies_the_clamped_ratio(seed: int, scale: float, max_weight: float) -> None:
    # VQGAN: d_weight = clamp(ratio, 0, 1e4) * discriminator_weight
    w, x_ref, x_adv = _problem(seed)
    _, weights = GradNormRatio(eps=1e-4, max_weight=max_weight, scale=scale)(
        _losses(w, x_ref, x_adv), w)
    expected = scale * _hand_lambda(w, x_ref, x_adv, 1.0, 1.0, 1e-4, max_weight)
    assert weights["lambda"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(seed=st.integers(0, 10_000), alpha=st.floats(1e-3, 1e3), max_weight=st.floats(0.5, 50))
@SETTINGS
def test_scaling_reference_by_alpha_scales_lambda_within_clamp(
    seed: int, alpha: float, max_weight: float
) -> None:
    w, x_ref, x_adv = _problem(seed)
    unclamped = GradNormRatio(eps=1e-8, max_weight=1e12)
    clamped = GradNormRatio(eps=1e-8, max_weight=max_weight)
    _, base = unclamped(_losses(w, x_ref, x_adv), w)
    _, scaled = clamped(_losses(w, x_ref, x_adv, a=alpha), w)
    assert scaled["lambda"] == pytest.approx(min(alpha * base["lambda"], max_weight), rel=1e-6)


@given(seed=st.integers(0, 10_000), a=st.floats(0.1, 10), b=st.floats(0.1, 10))
@SETTINGS
def test_lambda_is_the_norm_ratio_and_carries_no_gradient(seed: int, a: float, b: float) -> None:
    w, x_ref, x_adv = _problem(seed)
    bal = GradNormRatio(eps=1e-4, max_weight=1e4)
    losses = _losses(w, x_ref, x_adv, a, b)
    total, weights = bal(losses, w)
    lam = weights["lambda"]
    assert isinstance(lam, float)
    assert lam == pytest.approx(_hand_lambda(w, x_ref, x_adv, a, b, 1e-4, 1e4), rel=1e-9)
    assert weights["speckle_gan"] == lam and weights["mim"] == 1.0
    (g_total,) = torch.autograd.grad(total, w, retain_graph=True)
    (g_ref,) = torch.autograd.grad(losses["mim"], w, retain_graph=True)
    (g_adv,) = torch.autograd.grad(losses["speckle_gan"], w)
    # a λ with gradient would add (∂λ/∂w)·L_adv to this
    torch.testing.assert_close(g_total, g_ref + lam * g_adv)


@given(
    seed=st.integers(0, 10_000),
    which=st.sampled_from(["mim", "speckle_gan"]),
    kind=st.sampled_from(["zero", "inf", "nan"]),
    max_weight=st.floats(1.0, 1e6),
    fallback_frac=st.floats(0.0, 1.0),
)
@SETTINGS
def test_lambda_finite_and_bounded_for_degenerate_gradients(
    seed: int, which: str, kind: str, max_weight: float, fallback_frac: float
) -> None:
    w, x_ref, x_adv = _problem(seed)
    bal = GradNormRatio(max_weight=max_weight, fallback=fallback_frac * max_weight)
    scale = {"zero": 0.0, "inf": math.inf, "nan": math.nan}[kind]
    losses = _losses(w, x_ref, x_adv)
    losses[which] = (w * scale).sum() if kind != "zero" else losses[which] * 0.0
    with pytest.warns(RuntimeWarning) if kind != "zero" else _no_warning():
        total, weights = bal(losses, w)
    lam = weights["lambda"]
    assert math.isfinite(lam) and 0.0 <= lam <= max_weight
    if kind == "zero":
        assert bal.nonfinite_count == 0
        if which == "mim":
            assert lam == 0.0
        else:  # ||∇L_ref|| / (0 + eps), clamped
            (g_ref,) = torch.autograd.grad(losses["mim"], w)
            assert lam == pytest.approx(min(g_ref.norm().item() / bal.eps, max_weight))
    else:
        assert bal.nonfinite_count == 1 and lam == bal.fallback


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_warning_only_once_but_counted() -> None:
    w, x_ref, _ = _problem(0)
    bal = GradNormRatio()
    bad = {"mim": ((w - x_ref) ** 2).sum(), "speckle_gan": (w * math.nan).sum()}
    with pytest.warns(RuntimeWarning, match="non-finite"):
        bal(bad, w)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bal({"mim": ((w - x_ref) ** 2).sum(), "speckle_gan": (w * math.nan).sum()}, w)
    assert bal.nonfinite_count == 2


def test_total_is_sd_plus_mim_plus_lambda_adv() -> None:
    w, x_ref, x_adv = _problem(1)
    losses = _losses(w, x_ref, x_adv)
    losses["self_distillation"] = (w**3).sum()
    total, weights = GradNormRatio()(losses, w)
    lam = weights["lambda"]
    expected = losses["self_distillation"] + losses["mim"] + lam * losses["speckle_gan"]
    torch.testing.assert_close(total, expected)
    assert weights["self_distillation"] == 1.0


def test_warmup_and_absent_adaptive_skip_the_gradient() -> None:
    w, x_ref, _ = _problem(2)
    frozen = w.detach()  # autograd.grad against it would raise: proves no grad is taken
    mim = ((w - x_ref) ** 2).sum()
    off = SpeckleGANLoss(start_step=5).generator_loss(torch.randn(3, requires_grad=True), step=0)
    bal = GradNormRatio()
    for losses in ({"mim": mim}, {"mim": mim, "speckle_gan": off}):
        total, weights = bal(losses, frozen)
        torch.testing.assert_close(total, mim)
        assert weights["lambda"] == 0.0
    assert bal.calls == 0


def test_every_n_reuses_lambda_between_recomputations() -> None:
    w, x_ref, x_adv = _problem(3)
    bal = GradNormRatio(every=3)
    lams, hand = [], []
    for i in range(6):
        a = 1.0 + i  # λ would change on every call if recomputed
        _, weights = bal(_losses(w, x_ref, x_adv, a=a), w)
        lams.append(weights["lambda"])
        hand.append(_hand_lambda(w, x_ref, x_adv, a, 1.0, 1e-4, 1e4))
    assert lams == pytest.approx([hand[0]] * 3 + [hand[3]] * 3)


def test_state_dict_round_trips_through_weights_only_load() -> None:
    w, x_ref, x_adv = _problem(4)
    bal = GradNormRatio(every=10)
    bal(_losses(w, x_ref, x_adv), w)
    buf = io.BytesIO()
    torch.save(bal.state_dict(), buf)
    buf.seek(0)
    restored = GradNormRatio(every=10)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.state_dict() == bal.state_dict()
    # the restored balancer reuses λ on its next call, like the original would
    _, a = bal(_losses(w, x_ref, x_adv, a=5.0), w)
    _, b = restored(_losses(w, x_ref, x_adv, a=5.0), w)
    assert a["lambda"] == b["lambda"] == bal.last_lambda


def test_norms_in_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 32)
    x = torch.randn(64, 16)
    bal = GradNormRatio()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lin(x)
        losses = {
            "mim": out.float().square().mean(),
            "speckle_gan": F.softplus(-out.float()).mean(),
        }
        _, weights = bal(losses, lin.weight)
    out = lin(x)
    ref = _ratio(out.square().mean(), F.softplus(-out).mean(), lin.weight)
    assert weights["lambda"] == pytest.approx(ref, rel=3e-2)  # bf16 forward, float32 norms


def _ratio(ref, adv, p):
    (g1,) = torch.autograd.grad(ref, p, retain_graph=True)
    (g2,) = torch.autograd.grad(adv, p)
    return g1.norm().item() / (g2.norm().item() + 1e-4)


def test_configuration_errors() -> None:
    w, x_ref, x_adv = _problem(5)
    with pytest.raises(ConfigError, match=r"no loss named 'mim'.*\['speckle_gan'\]"):
        GradNormRatio()({"speckle_gan": (w * x_adv).sum()}, w)
    with pytest.raises(ConfigError, match="does not depend on the balancing parameter"):
        other = torch.zeros(3, requires_grad=True)
        GradNormRatio()(_losses(w, x_ref, x_adv), other)
    with pytest.raises(ConfigError, match="scalar"):
        GradNormRatio()({"mim": w * 2}, w)
    with pytest.raises(ConfigError, match="fallback"):
        GradNormRatio(max_weight=1.0, fallback=2.0)
    with pytest.raises(ConfigError, match="every"):
        GradNormRatio(every=0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="scale must be finite and >= 0"):
            GradNormRatio(scale=bad)
