"""Multi-crop views: shapes, determinism, field of view, each augmentation by hand, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arlkit.data.dataset import ViewDataset, view_seed
from arlkit.data.preprocess import preprocess
from arlkit.data.views import MultiCropViews, single_view
from arlkit.errors import ConfigError, UnknownOrganError
from arlkit.registry import default_registries
from arlkit.taxonomy import Taxonomy

CARDIAC = Taxonomy().index("cardiac")
NEUTRAL = {"p_intensity": 0.0, "flip": False}


def fan_sample(size: int = 128, organ: int = 0, shift: int = 0, seed: int = 0) -> dict:
    """A preprocessed sector image; ``shift`` moves the apex sideways (asymmetric FOV)."""
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r, th = np.hypot(xx - w / 2 - shift, yy + 30), np.arctan2(xx - w / 2 - shift, yy + 30)
    inside = (r > 60) & (r < 260) & (np.abs(th) < 0.7)
    img = np.where(inside, np.random.default_rng(seed).rayleigh(0.25, (h, w)).clip(0, 1), 0)
    out = preprocess(img.astype(np.float32), size, crop_fov=shift == 0)
    return {"image": out.image, "fov": out.fov, "organ": organ, "label": 1, "probe": "convex",
            "id": f"fan{seed}", "patient_id": "p", "valid": True}  # fmt: skip


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_keys_and_metadata() -> None:
    views = MultiCropViews(global_size=64, local_size=32, n_global=2, n_local=3)
    sample = fan_sample()
    out = views(sample, generator=gen(0))
    assert out["global"].shape == (2, 1, 64, 64) and out["local"].shape == (3, 1, 32, 32)
    assert out["global_fov"].dtype == torch.bool and out["local_fov"].shape == (3, 1, 32, 32)
    assert out["global"].dtype == torch.float32
    for key in ("organ", "label", "probe", "id", "patient_id", "image", "fov"):
        assert out[key] is sample[key]
    assert 0.0 <= out["global"].min() and out["global"].max() <= 1.0
    assert (views.n_global, views.n_local, views.global_size) == (2, 3, 64)


def test_deterministic_given_the_generator() -> None:
    views, sample = MultiCropViews(64, 32, 2, 4, blur_prob=0.5), fan_sample()
    a, b, c = (views(sample, generator=gen(s)) for s in (1, 1, 2))
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    assert not torch.equal(a["global"], c["global"])


def test_views_stay_inside_the_field_of_view() -> None:
    views = MultiCropViews(64, 32, 2, 6, min_fov_fraction=0.6, flip=False)
    plain = MultiCropViews(64, 32, 2, 6, min_fov_fraction=0.6, flip=False, p_intensity=0.0)
    sample = fan_sample()
    for seed in range(15):
        out, ref = views(sample, generator=gen(seed)), plain(sample, generator=gen(seed))
        for name in ("global", "local"):
            fov = out[f"{name}_fov"]
            assert (fov.float().mean((1, 2, 3)) >= 0.6).all()
            # augmentation stays inside the field of view; the background is untouched
            assert torch.equal(out[name][~fov], ref[name][~fov])
            assert not torch.equal(out[name][fov], ref[name][fov])


def test_identity_crop_without_augmentation() -> None:
    # whole-FOV square crop at the same size: the global view is the image itself
    sample = fan_sample(64)
    sample["fov"] = torch.ones_like(sample["fov"])
    views = MultiCropViews(64, 32, 1, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), **NEUTRAL)
    out = views(sample, generator=gen(0))
    torch.testing.assert_close(out["global"][0], sample["image"])
    assert out["local"].shape == (0, 1, 32, 32)


@pytest.mark.parametrize(("h", "w"), [(40, 120), (120, 40), (60, 60)])
def test_crop_fallback_is_torchvision_centre_crop(h: int, w: int) -> None:
    # no try can fit (scale ≈ 1, aspect ratios the box cannot hold): RandomResizedCrop then
    # takes the whole box with its aspect ratio clamped to the range, centred — not a square
    from torchvision.transforms.v2 import RandomResizedCrop

    scale, ratio = (0.99, 1.0), (1.25, 2.0)
    sample = {"image": torch.rand(1, h, w), "fov": torch.ones(1, h, w, dtype=torch.bool)}
    views = MultiCropViews(32, 16, 1, 0, global_scale=scale, ratio=ratio, **NEUTRAL)
    boxes: list[tuple[int, int, int, int]] = []
    original = views._crop_box
    views._crop_box = lambda *a: boxes.append(original(*a)) or boxes[-1]  # type: ignore[method-assign]
    views(sample, generator=gen(0))
    expected = RandomResizedCrop.get_params(sample["image"], list(scale), list(ratio))
    assert boxes == [tuple(expected)]  # (top, left, h, w)


def _one_change(sample: dict, seed: int = 0, **strengths: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after) of the single global view with one augmentation enabled."""
    base = {"gain": 0.0, "contrast": 0.0, "gamma": 0.0, "attenuation": 0.0}
    common = dict(global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    plain = MultiCropViews(64, 32, 1, 0, p_intensity=0.0, **common, **base)
    aug = MultiCropViews(64, 32, 1, 0, p_intensity=1.0, **common, **{**base, **strengths})
    before, after = plain(sample, generator=gen(seed)), aug(sample, generator=gen(seed))
    x, y = before["global"], after["global"]
    keep = before["global_fov"] & (y > 0.01) & (y < 0.99)  # away from the clamps
    return x[keep], y[keep]


def _full_fov(size: int = 64) -> dict:
    torch.manual_seed(0)
    image = torch.rand(1, size, size) * 0.6 + 0.2
    return {"image": image, "fov": torch.ones(1, size, size, dtype=torch.bool), "organ": 0}


def test_gain_is_one_offset() -> None:
    x, y = _one_change(_full_fov(), gain=0.15)
    offset = y - x
    assert offset.std() < 1e-5 and 0 < offset.mean().abs() <= 0.15


def test_gamma_is_one_power() -> None:
    x, y = _one_change(_full_fov(), seed=3, gamma=0.5)
    g = torch.log(y) / torch.log(x)
    assert g.std() < 1e-3 and 1 / 1.5 - 1e-4 <= g.mean() <= 1.5 + 1e-4 and abs(g.mean() - 1) > 1e-3


def test_contrast_scales_around_the_mean() -> None:
    sample = _full_fov()
    x, y = _one_change(sample, seed=5, contrast=0.4)
    m = sample["image"].mean()
    c = (y - m) / (x - m)
    c = c[(x - m).abs() > 0.05]
    assert c.std() < 1e-3 and 0.6 - 1e-4 <= c.mean() <= 1.4 + 1e-4


def test_depth_attenuation_is_a_ramp_over_rows() -> None:
    sample = _full_fov()
    views = MultiCropViews(64, 32, 1, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False,
                           p_intensity=1.0, gain=0, contrast=0, gamma=0, attenuation=0.3)  # fmt: skip
    diff = views(sample, generator=gen(2))["global"][0, 0] - sample["image"][0]
    rows = diff.mean(1)
    assert (diff - rows[:, None]).abs().max() < 1e-5  # the same across a row
    steps = rows[1:] - rows[:-1]
    assert steps.std() < 1e-5 and steps.abs().mean() > 1e-4  # linear in depth, not zero
    assert abs(rows.mean()) < 1e-3  # centred on mid depth


def _flips(sample: dict, seeds: range = range(12), **kw) -> list[bool]:
    on = MultiCropViews(64, 32, 2, 0, flip=True, **kw)
    off = MultiCropViews(64, 32, 2, 0, flip=False, **kw)
    flips = []
    for s in seeds:
        a, b = on(sample, generator=gen(s))["global"], off(sample, generator=gen(s))["global"]
        for va, vb in zip(a, b):
            assert torch.equal(va, vb) or torch.equal(va, vb.flip(-1))
            flips.append(not torch.equal(va, vb))
    return flips


def test_flip_where_valid() -> None:
    flips = _flips(fan_sample())
    assert any(flips) and not all(flips)
    assert not any(_flips(fan_sample(organ=CARDIAC)))  # echo views have an orientation
    assert not any(_flips(fan_sample(shift=60)))  # asymmetric field of view
    assert any(_flips(fan_sample(organ=CARDIAC), no_flip_organs=[]))


def test_blur_is_off_by_default_and_smooths_when_on() -> None:
    sample = _full_fov()
    sharp = MultiCropViews(64, 32, 1, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), **NEUTRAL)
    blurred = MultiCropViews(64, 32, 1, 0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0),
                             blur_prob=1.0, blur_sigma=(1.0, 1.0), **NEUTRAL)  # fmt: skip
    a, b = sharp(sample, generator=gen(0))["global"], blurred(sample, generator=gen(0))["global"]
    torch.testing.assert_close(a[0], sample["image"])
    hf = lambda v: (v[..., 1:] - v[..., :-1]).abs().mean()  # noqa: E731
    assert hf(b) < 0.5 * hf(a)


def test_view_dataset_is_deterministic_per_epoch_and_index() -> None:
    class Source:
        organ_indices = [0, 0, 0]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            if i == 2:
                return {"valid": False, "id": "bad.png", "error": "truncated", "organ": 0}
            return fan_sample(64, seed=i)

    ds = ViewDataset(Source(), MultiCropViews(64, 32, 2, 2), seed=11)
    first = ds[0]["global"]
    assert torch.equal(first, ds[0]["global"]) and not torch.equal(first, ds[1]["global"][:, :, :, :])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["global"])
    ds.set_epoch(0)
    assert torch.equal(first, ds[0]["global"])
    assert ds[2] == {"valid": False, "id": "bad.png", "error": "truncated", "organ": 0}
    assert ds.organ_indices == [0, 0, 0] and len(ds) == 3
    assert len({view_seed(11, e, i) for e in range(3) for i in range(3)}) == 9
    # (index, draw) keys of OrganBalancedSampler(draws=True): draw 0 is the index's views,
    # a repeat of the image in the epoch gets its own
    assert torch.equal(ds[(0, 0)]["global"], first)
    assert not torch.equal(ds[(0, 1)]["global"], first)
    assert torch.equal(ds[(0, 1)]["global"], ds[(0, 1)]["global"])
    assert ds[(2, 1)]["valid"] is False


def test_view_dataset_gives_the_views_arlkit_run_trains_on() -> None:
    """The public ViewDataset and the engine's ViewsDataset seed views alike: the same seed,
    epoch, index and draw give the same crops in a user's own loop and in ``arlkit run``."""
    from arlkit.engine.data import ViewsDataset

    class Source(torch.utils.data.Dataset):
        organ_indices = [0, 0, 0]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            return fan_sample(64, seed=i)

    views = MultiCropViews(64, 32, 2, 2)
    public, engine = ViewDataset(Source(), views, seed=7), ViewsDataset(Source(), views, 7)
    for epoch, index, draw in ((0, 0, 0), (0, 2, 0), (3, 1, 0), (3, 1, 2)):
        public.set_epoch(epoch)
        mine = public[(index, draw)]
        trained = engine[(index, 0, epoch, draw)]  # (index, position in batch, epoch, repeat)
        for key in ("global", "local"):
            assert torch.equal(mine[key], trained[key]), (epoch, index, draw, key)


def test_clean_global_is_the_same_crop_before_intensity_augmentation() -> None:
    """``global_clean``: same crops and flips as ``global``, no gain/contrast/gamma/ramp/blur;
    asking for it draws nothing extra, so the augmented views stay exactly as they were."""
    sample = fan_sample()
    kwargs = {"global_size": 48, "local_size": 24, "n_global": 3, "n_local": 2}
    with_clean, plain = MultiCropViews(**kwargs, clean_global=True), MultiCropViews(**kwargs)
    # zero-strength augmentation draws the same numbers, so its views are the clean crops
    no_aug = MultiCropViews(**kwargs, gain=0.0, contrast=0.0, gamma=0.0, attenuation=0.0,
                            clean_global=True)
    blurred = MultiCropViews(**kwargs, blur_prob=1.0, clean_global=True)
    for seed in range(8):
        out, ref = with_clean(sample, generator=gen(seed)), plain(sample, generator=gen(seed))
        assert torch.equal(out["global"], ref["global"]) and torch.equal(out["local"], ref["local"])
        assert "global_clean" not in ref
        clean = out["global_clean"]
        assert clean.shape == out["global"].shape and clean.dtype == torch.float32
        assert not torch.allclose(clean, out["global"], atol=1e-3)  # augmentation changed views
        assert torch.allclose(no_aug(sample, generator=gen(seed))["global"], clean, atol=1e-5)
        assert torch.equal(blurred(sample, generator=gen(seed))["global_clean"], clean)


def test_clean_global_follows_the_flips() -> None:
    sample = fan_sample()  # symmetric sector: flippable
    flips = MultiCropViews(48, 24, n_global=8, n_local=0, clean_global=True)
    fixed = MultiCropViews(48, 24, n_global=8, n_local=0, flip=False, clean_global=True)
    out, ref = flips(sample, generator=gen(3)), fixed(sample, generator=gen(3))
    mirrored = []
    for clean, unflipped, fov, fov_ref in zip(out["global_clean"], ref["global_clean"],
                                              out["global_fov"], ref["global_fov"]):
        mirrored.append(not torch.equal(clean, unflipped))
        expected = unflipped.flip(-1) if mirrored[-1] else unflipped
        assert torch.equal(clean, expected)
        assert torch.equal(fov, fov_ref.flip(-1) if mirrored[-1] else fov_ref)
    assert any(mirrored) and not all(mirrored)


def test_single_view_and_registry() -> None:
    single = single_view(size=32)
    out = single(fan_sample(64), generator=gen(0))
    assert out["global"].shape == (1, 1, 32, 32) and out["local"].shape[0] == 0
    built = default_registries.transforms.build("multicrop", {"n_local": 2, "local_scale": [0.1, 0.3]})
    assert isinstance(built, MultiCropViews) and built.local_scale == (0.1, 0.3)
    assert (built.n_global, built.n_local, built.global_size) == (2, 2, 224)
    one = default_registries.transforms.build("single", {"size": 96})
    assert (one.n_global, one.n_local, one.global_size) == (1, 0, 96)
    assert not one.clean_global
    assert default_registries.transforms.build("single", {"clean_global": True}).clean_global
    assert default_registries.transforms.build("multicrop", {"clean_global": True}).clean_global


@pytest.mark.parametrize(
    "kwargs",
    [{"n_global": 0}, {"global_scale": (0.5, 0.4)}, {"local_scale": (0.0, 0.4)},
     {"p_intensity": 1.5}, {"contrast": 1.0}, {"ratio": (0.0, 1.0)}],
)  # fmt: skip
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        MultiCropViews(**kwargs)


def test_unknown_no_flip_organ_is_named() -> None:
    with pytest.raises(UnknownOrganError, match="cardic"):
        MultiCropViews(no_flip_organs=["cardic"])
    custom = Taxonomy(("breast", "thyroid"))
    assert MultiCropViews(taxonomy=custom).no_flip == frozenset()


def test_data_modules_import_alone() -> None:
    import subprocess
    import sys

    code = (
        "import sys, arlkit.data, arlkit.data.views, arlkit.data.sampler, arlkit.data.collate;"
        "print(sorted(m for m in ('pluggy', 'pydantic', 'rich', 'pydicom', 'pyarrow',"
        " 'arlkit.engine', 'arlkit.data.synthetic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
