"""MIM loss: hand computations, masked-only behaviour, norm_pix formula, patchify."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.errors import ConfigError, DataError
from arlkit.losses import MIMLoss, mim_loss, patchify, unpatchify


def test_patchify_order_matches_mae_layout() -> None:
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # (B, C, H, W)
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 8)
    # patch 1 = grid row 0, column 1: pixels (0,2),(0,3),(1,2),(1,3), channels innermost
    expected = torch.stack(
        [img[0, c, i, j] for i, j in [(0, 2), (0, 3), (1, 2), (1, 3)] for c in range(2)]
    )
    torch.testing.assert_close(patches[0, 1], expected)


@given(
    b=st.integers(1, 3),
    c=st.integers(1, 3),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    p=st.sampled_from([1, 2, 4]),
)
@settings(max_examples=25, deadline=None)
def test_unpatchify_inverts_patchify(b: int, c: int, gh: int, gw: int, p: int) -> None:
    img = torch.randn(b, c, gh * p, gw * p)
    torch.testing.assert_close(unpatchify(patchify(img, p), p, grid=(gh, gw)), img)


def test_patchify_rejects_non_multiple() -> None:
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        patchify(torch.zeros(1, 1, 10, 8), 4)


def test_equals_hand_computation() -> None:
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]])  # (1, 3, 2)
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    # masked patches 0 and 2: mean over dims of squared error, then mean over patches
    expected_l2 = ((1 + 4) / 2 + (4 + 4) / 2) / 2
    expected_l1 = ((1 + 2) / 2 + (2 + 2) / 2) / 2
    assert mim_loss(pred, target, mask).item() == pytest.approx(expected_l2)
    assert mim_loss(pred, target, mask, loss="l1").item() == pytest.approx(expected_l1)


def test_average_is_over_masked_patches_not_all() -> None:
    pred = torch.ones(2, 4, 3)
    target = torch.zeros(2, 4, 3)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 0] = True
    # one masked patch with error 1: the loss is 1, not 1/8
    assert mim_loss(pred, target, mask).item() == pytest.approx(1.0)


@given(seed=st.integers(0, 10_000), norm_pix=st.booleans(), loss=st.sampled_from(["l2", "l1"]))
@settings(max_examples=20, deadline=None)
def test_unmasked_patches_do_not_matter(seed: int, norm_pix: bool, loss: str) -> None:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    target = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 6, generator=g) < 0.5
    mask[:, 0] = True
    other_pred = torch.where(mask[..., None], pred, torch.randn(2, 6, 4, generator=g) * 10)
    other_target = torch.where(mask[..., None], target, torch.randn(2, 6, 4, generator=g) * 10)
    p1, p2 = pred.clone().requires_grad_(True), other_pred.clone().requires_grad_(True)
    l1 = mim_loss(p1, target, mask, norm_pix=norm_pix, loss=loss)
    l2 = mim_loss(p2, other_target, mask, norm_pix=norm_pix, loss=loss)
    torch.testing.assert_close(l1, l2)
    l1.backward()
    l2.backward()
    assert torch.all(p1.grad[~mask] == 0)
    torch.testing.assert_close(p1.grad, p2.grad)


def test_non_finite_unmasked_values_do_not_poison_the_loss() -> None:
    pred = torch.zeros(1, 2, 3)
    target = torch.ones(1, 2, 3)
    pred[0, 1] = float("inf")
    mask = torch.tensor([[True, False]])
    assert mim_loss(pred, target, mask).item() == pytest.approx(1.0)


def test_norm_pix_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 5, 12, generator=g)
    target = torch.rand(2, 5, 12, generator=g) * 3 + 1
    mask = torch.rand(2, 5, generator=g) < 0.6
    mask[0, 0] = True
    mean = target.mean(-1, keepdim=True)
    var = ((target - mean) ** 2).sum(-1, keepdim=True) / (12 - 1)  # unbiased, as MAE
    normed = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - normed) ** 2).mean(-1)
    expected = per_patch[mask].mean()
    torch.testing.assert_close(mim_loss(pred, target, mask, norm_pix=True), expected)


def test_images_with_patch_size_equal_patches() -> None:
    g = torch.Generator().manual_seed(1)
    img_pred, img_target = (
        torch.randn(2, 1, 8, 8, generator=g),
        torch.randn(2, 1, 8, 8, generator=g),
    )
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    a = mim_loss(img_pred, img_target, mask, patch_size=4)
    b = mim_loss(patchify(img_pred, 4), patchify(img_target, 4), mask)
    torch.testing.assert_close(a, b)
    # mixed: patch predictions against an image target
    torch.testing.assert_close(mim_loss(patchify(img_pred, 4), img_target, mask, patch_size=4), b)


def test_all_false_mask_raises() -> None:
    with pytest.raises(DataError, match="selects no patch"):
        mim_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))


def test_bad_arguments_raise_clear_errors() -> None:
    x = torch.zeros(1, 4, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"unknown loss 'l3'.*'l2', 'l1'"):
        mim_loss(x, x, mask, loss="l3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pass patch_size"):
        mim_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), mask)
    with pytest.raises(ConfigError, match="mask shape"):
        mim_loss(x, x, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="differ in shape"):
        mim_loss(x, torch.zeros(1, 4, 5), mask)


def test_module_matches_function_and_bf16_inputs_give_float32() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    mask = torch.tensor([[True, True, False, False], [False, True, False, True]])
    module = MIMLoss(patch_size=4, norm_pix=True, loss="l1")
    torch.testing.assert_close(
        module(pred, target, mask), mim_loss(pred, target, mask, True, "l1", patch_size=4)
    )
    out = module(pred.bfloat16(), target.bfloat16(), mask)
    assert out.dtype == torch.float32
