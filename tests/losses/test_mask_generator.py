"""MaskGenerator: exact counts, reproducibility, block structure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.errors import ConfigError
from arlkit.losses import MaskGenerator


@given(
    rows=st.integers(2, 16),
    cols=st.integers(2, 16),
    ratio=st.floats(0.05, 0.95),
    mode=st.sampled_from(["random", "block"]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=60, deadline=None)
def test_every_row_masks_exactly_round_ratio_n(
    rows: int, cols: int, ratio: float, mode: str, seed: int
) -> None:
    n = rows * cols
    k = round(ratio * n)
    if not 0 < k < n:
        with pytest.raises(ConfigError):
            MaskGenerator((rows, cols), ratio, mode)  # type: ignore[arg-type]
        return
    gen = MaskGenerator((rows, cols), ratio, mode)  # type: ignore[arg-type]
    mask = gen(5, generator=torch.Generator().manual_seed(seed))
    assert mask.dtype == torch.bool and mask.shape == (5, n)
    assert mask.sum(dim=1).tolist() == [k] * 5


@pytest.mark.parametrize("mode", ["random", "block"])
def test_reproducible_from_generator(mode: str) -> None:
    gen = MaskGenerator((14, 14), 0.75, mode)  # type: ignore[arg-type]
    a = gen(8, generator=torch.Generator().manual_seed(3))
    b = gen(8, generator=torch.Generator().manual_seed(3))
    c = gen(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # rows differ within a batch


def _masked_neighbour_fraction(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean fraction of the 4 neighbours of a masked patch that are masked too."""
    m = mask.reshape(-1, 1, *grid).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = torch.nn.functional.conv2d(m, kernel, padding=1)
    count = torch.nn.functional.conv2d(torch.ones_like(m), kernel, padding=1)
    return float(((neighbours / count) * m).sum() / m.sum())


def test_block_masks_are_spatially_clustered() -> None:
    grid = (14, 14)
    g = torch.Generator().manual_seed(0)
    block = MaskGenerator(grid, 0.4, "block")(32, generator=g)
    rand = MaskGenerator(grid, 0.4, "random")(32, generator=g)
    # random masking: a neighbour is masked with probability ~0.4; blocks cluster
    assert _masked_neighbour_fraction(rand, grid) == pytest.approx(0.4, abs=0.05)
    assert _masked_neighbour_fraction(block, grid) > 0.6


def test_bad_options_raise() -> None:
    with pytest.raises(ConfigError, match="mask_ratio"):
        MaskGenerator((4, 4), 1.0)
    with pytest.raises(ConfigError, match=r"unknown mode 'grid'.*'random', 'block'"):
        MaskGenerator((4, 4), 0.5, "grid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="grid"):
        MaskGenerator((0, 4), 0.5)


@pytest.mark.parametrize("mode", ["random", "block"])
def test_zero_rows_give_an_empty_mask(mode: str) -> None:
    gen = MaskGenerator((4, 4), 0.5, mode)  # type: ignore[arg-type]
    mask = gen(0, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (0, 16)
