"""PCA colouring of patch tokens."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_backbone

from arlkit.errors import ConfigError
from arlkit.eval.pca import fov_patches, patch_pca_rgb, pca_figure, pca_panels


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
                      organs=torch.tensor([11, 0]), titles=["x", "y"], foreground="all")
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
               organs=organs, side={"probe": probe, "depth_cm": torch.tensor([4.0, 5.0])},
               foreground="all")
    (seen,) = reader.seen
    assert set(seen) == {"organ", "probe"} and seen["probe"].tolist() == [2, 0]


# -- the PCA is fitted on the field of view; the background stays black ----------------------

class Fixed(torch.nn.Module):
    """A backbone stand-in that returns given patch tokens (after one prefix token)."""

    patch_size, num_prefix_tokens = 8, 1

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = tokens  # (B, N, C)

    def forward_features(self, x, organ=None):
        return torch.cat([self.tokens.new_zeros(x.shape[0], 1, self.tokens.shape[-1]), self.tokens], 1)


def _fan(b: int = 2, side: int = 32) -> torch.Tensor:
    """(B, 1, side, side) bool: a triangle ("sector") hanging from the top centre."""
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    return ((xx - side / 2).abs() <= 0.6 * yy)[None, None].expand(b, 1, -1, -1).clone()


def _direct_rgb(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """PCA colours of the kept tokens, computed here from an SVD of those tokens alone."""
    fit = tokens.reshape(-1, tokens.shape[-1]).double()[keep.reshape(-1)]
    fit = fit - fit.mean(0)
    _, _, vh = torch.linalg.svd(fit, full_matrices=False)
    proj = fit @ vh[:3].T
    proj = proj * torch.sign(proj[proj.abs().argmax(0), torch.arange(3)])
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    return ((proj - lo) / (hi - lo)).clamp(0, 1).float()  # (F, 3)


def test_fov_patches_take_the_patches_mostly_inside() -> None:
    fov = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    fov[0, 0, :8, :5] = True    # top-left patch: 40/64 inside
    fov[0, 0, :8, 8:12] = True  # top-right patch: exactly half inside
    fov[0, 0, 8:, :3] = True    # bottom-left patch: 24/64 inside
    assert fov_patches(fov, 8).tolist() == [[[True, False], [False, False]]]


def test_pca_is_fitted_on_foreground_patches_only() -> None:
    g = torch.Generator().manual_seed(0)
    fov = _fan()
    keep = fov_patches(fov, 8)  # (2, 4, 4)
    assert 0 < keep.sum() < keep.numel()
    tokens = torch.randn(2, 16, 6, generator=g)
    # loud background tokens: a PCA over all patches would be about them
    tokens[~keep.view(2, 16)] = 50 * torch.randn(int((~keep).sum()), 6, generator=g)
    rgb = patch_pca_rgb(tokens, (4, 4), keep)  # (2, 3, 4, 4)
    per_patch = rgb.permute(0, 2, 3, 1)  # (2, 4, 4, 3)
    assert torch.equal(per_patch[~keep], torch.zeros(int((~keep).sum()), 3))  # black
    assert torch.allclose(per_patch[keep], _direct_rgb(tokens, keep), atol=1e-5)
    # the background does not move the colours of the foreground
    other = tokens.clone()
    other[~keep.view(2, 16)] = -other[~keep.view(2, 16)] + 7
    assert torch.equal(patch_pca_rgb(other, (4, 4), keep), rgb)
    assert not torch.allclose(patch_pca_rgb(tokens, (4, 4)), rgb)  # all patches: other colours


def test_bad_foreground_masks_are_named() -> None:
    with pytest.raises(ConfigError, match=r"foreground must be a \(1, 4, 4\) bool mask"):
        patch_pca_rgb(torch.randn(1, 16, 4), (4, 4), torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ConfigError, match="marks no patch"):
        patch_pca_rgb(torch.randn(1, 16, 4), (4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="fov must be a mask shaped like the images"):
        pca_panels(torch.rand(2, 1, 32, 32), [("a", Fixed(torch.randn(2, 16, 4)))],
                   fov=_fan()[:, :, :16], log=print)
    # a 0/1 float mask means what the bool mask means
    tokens = torch.randn(2, 16, 4)
    as_bool = pca_panels(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
                         [("a", Fixed(tokens))], fov=_fan(), log=print)
    as_float = pca_panels(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
                          [("a", Fixed(tokens))], fov=_fan().float(), log=print)
    assert all((a[1] == b[1]).all() for a, b in zip(as_bool, as_float))
    with pytest.raises(ConfigError, match="foreground must be one of fov, all, got 'fan'"):
        pca_panels(torch.rand(2, 1, 32, 32), [("a", Fixed(torch.randn(2, 16, 4)))],
                   fov=_fan(), foreground="fan", log=print)


def test_overlay_is_black_outside_the_fov_and_coloured_from_it() -> None:
    g = torch.Generator().manual_seed(1)
    images, fov = 0.1 + 0.9 * torch.rand(2, 1, 32, 32, generator=g), _fan()
    keep = fov_patches(fov, 8)
    tokens = torch.randn(2, 16, 6, generator=g)
    tokens[~keep.view(2, 16)] = 50 * torch.randn(int((~keep).sum()), 6, generator=g)
    notes: list[str] = []
    (_, gray), (_, overlay) = pca_panels(images, [("f", Fixed(tokens))], fov=fov, alpha=1.0,
                                         log=notes.append)
    assert notes == []
    outside = ~fov[:, 0].numpy()
    assert (overlay[outside] == 0).all()
    # a foreground patch shows its PCA colour where it is inside the fov
    expected = torch.zeros(2, 4, 4, 3)
    expected[keep] = _direct_rgb(tokens, keep)
    pixels = expected.repeat_interleave(8, 1).repeat_interleave(8, 2).numpy()  # (2, 32, 32, 3)
    fitted = (keep.repeat_interleave(8, 1).repeat_interleave(8, 2) & fov[:, 0]).numpy()
    assert abs(overlay[fitted] - pixels[fitted]).max() < 1e-5
    # a background patch's pixels inside the fov keep the grey image
    edge = (~keep).repeat_interleave(8, 1).repeat_interleave(8, 2).numpy() & ~outside
    assert edge.any() and abs(overlay[edge] - gray[edge]).max() < 1e-6
    # --foreground all: the old view, fitted on every patch (still black outside the fov)
    (_, _), (_, old) = pca_panels(images, [("f", Fixed(tokens))], fov=fov, alpha=1.0,
                                  foreground="all", log=notes.append)
    assert notes == [] and (old[outside] == 0).all()
    assert abs(old[fitted] - pixels[fitted]).max() > 0.1


def test_an_image_without_field_of_view_falls_back_with_a_note() -> None:
    fov = _fan()
    fov[1] = False  # nothing detected in the second image
    fov[1, 0, 0, 0] = True  # (or a speck smaller than half a patch)
    tokens = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(2))
    notes: list[str] = []
    panels = pca_panels(torch.rand(2, 1, 32, 32) + 0.1, [("a", Fixed(tokens)), ("b", Fixed(-tokens))],
                        fov=fov, alpha=1.0, titles=["plax", "psax"], log=notes.append)
    assert notes == ["pca: row 2 (psax): no 8×8 patch lies mostly inside the field of view; "
                     "its PCA uses all its patches"]  # once, not once per backbone
    keep = fov_patches(fov, 8)
    keep[1] = True
    expected = torch.zeros(2, 4, 4, 3)
    expected[keep] = _direct_rgb(tokens, keep)
    overlay = panels[1][1]
    assert abs(overlay[1] - expected[1].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()).max() < 1e-5
    assert (overlay[0][~fov[0, 0].numpy()] == 0).all()  # the first image is still masked
    # without a log the note is a warning; without any fov it says so
    with pytest.warns(UserWarning, match="row 2: .*all its patches"):
        pca_panels(torch.rand(2, 1, 32, 32), [("a", Fixed(tokens))], fov=fov)
    with pytest.warns(UserWarning, match="no field-of-view masks given"):
        pca_panels(torch.rand(2, 1, 32, 32), [("a", Fixed(tokens))])


# -- the command ------------------------------------------------------------------------------

@pytest.mark.parametrize("foreground", [[], ["--foreground", "all"]])
def test_viz_pca_draws_the_synthetic_data(run, tmp_path, foreground) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "pca.png"
    res = run("viz", "pca", "--backbone", "random", "--backbone", "random:1", "--arch", _arch(tmp_path),
              "--n", "2", "--out", str(out), *foreground)
    assert res.code == 0, res.err
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "field of view" not in res.out + res.err  # every synthetic image has one


def test_viz_pca_notes_an_image_without_field_of_view(run, tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import arlkit.eval.data as eval_data

    real = eval_data.picture_samples

    def without_fov(*args, **kwargs):
        samples, titles, notes = real(*args, **kwargs)
        samples[1] = {**samples[1], "fov": torch.zeros_like(samples[1]["fov"])}
        return samples, titles, notes

    monkeypatch.setattr(eval_data, "picture_samples", without_fov)
    out = tmp_path / "pca.png"
    res = run("viz", "pca", "--backbone", "random", "--arch", _arch(tmp_path), "--n", "2",
              "--out", str(out))
    assert res.code == 0, res.err
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "pca: row 2 (" in res.out and "its PCA uses all its patches" in res.out
    assert "row 1" not in res.out


def _arch(tmp_path) -> str:
    """The tiny test backbone as an export, for ``--arch`` of ``--backbone random``."""
    from eval_helpers import tiny_config

    from arlkit.engine.export import export_backbone

    path = tmp_path / "tiny.safetensors"
    if not path.exists():
        export_backbone(tiny_backbone(0), tiny_config(), str(path))
    return str(path)
