"""PCA colouring of patch tokens."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_backbone

from arlkit.errors import ConfigError
from arlkit.eval.pca import patch_pca_rgb, pca_figure


def test_two_token_clusters_get_two_colours() -> None:
    g = torch.Generator().manual_seed(0)
    grid = (4, 4)
    left = torch.zeros(16, dtype=torch.bool).view(4, 4)
    left[:, :2] = True
    direction = torch.randn(8, generator=g)
    tokens = torch.where(left.view(-1, 1), direction, -direction)[None]  # (1, 16, 8)
    tokens = tokens + 1e-3 * torch.randn(1, 16, 8, generator=g)
    rgb = patch_pca_rgb(tokens, grid)
    assert rgb.shape == (1, 3, 4, 4) and rgb.min() >= 0 and rgb.max() <= 1
    red = rgb[0, 0]  # the first component separates the halves
    assert (red[left] - red[~left].mean()).abs().min() > 0.5
    assert red[left].std() < 0.05 and red[~left].std() < 0.05
    # deterministic, and unchanged by flipping every token's sign
    assert torch.equal(rgb, patch_pca_rgb(tokens, grid))
    assert torch.allclose(rgb, patch_pca_rgb(-tokens, grid), atol=1e-5)


def test_grid_mismatch_raises() -> None:
    with pytest.raises(ConfigError, match="do not fill"):
        patch_pca_rgb(torch.randn(1, 15, 4), (4, 4))


def test_figure(tmp_path) -> None:
    images = torch.rand(2, 1, 32, 32)
    path = pca_figure(images, [("a", tiny_backbone(0)), ("b", tiny_backbone(1))], str(tmp_path / "p.png"),
                      organs=torch.tensor([11, 0]), titles=["x", "y"])
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_figure_feeds_side_information_to_backbones_that_read_it(tmp_path) -> None:
    pytest.importorskip("matplotlib")

    class Recording(torch.nn.Module):
        """Reads the probe (condition_keys) and records what it was given."""

        condition_keys = ("probe",)
        patch_size, num_prefix_tokens = 8, 1

        def __init__(self) -> None:
            super().__init__()
            self.seen = []

        def forward_features(self, x, organ=None):
            self.seen.append(organ)
            return torch.randn(x.shape[0], 1 + (x.shape[-1] // 8) ** 2, 4)

    reader, plain = Recording(), tiny_backbone(0)
    organs, probe = torch.tensor([11, 0]), torch.tensor([2, 0])
    pca_figure(torch.rand(2, 1, 32, 32), [("r", reader), ("p", plain)], str(tmp_path / "p.png"),
               organs=organs, side={"probe": probe, "depth_cm": torch.tensor([4.0, 5.0])})
    (seen,) = reader.seen
    assert set(seen) == {"organ", "probe"} and seen["probe"].tolist() == [2, 0]
