"""Field-of-view detection, crop, letterbox and mask warping on images with known geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from arlkit.data.preprocess import find_fov, preprocess, warp_mask


def iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def annotate(img: np.ndarray) -> np.ndarray:
    """Burn in what devices put around the scan: text top-left and a grey bar at the right."""
    h, w = img.shape
    im = Image.fromarray((img * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.text((4, 3), "L12-5 38mm FR 30Hz", fill=255)
    draw.text((4, h - 14), "TIS 0.4 MI 1.1", fill=220)
    for i in range(h // 3):
        draw.line([(w - 10, h // 4 + i), (w - 4, h // 4 + i)], fill=int(255 * i / (h // 3)))
    return np.asarray(im).astype(np.float32) / 255.0


def speckle(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).rayleigh(0.25, shape), 0, 1).astype(np.float32)


def fan(h: int = 300, w: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A convex-probe sector with an anechoic cyst at its edge; returns image, true FOV."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    apex = (w / 2, -0.15 * h)
    r, th = np.hypot(xx - apex[0], yy - apex[1]), np.arctan2(xx - apex[0], yy - apex[1])
    inside = (r >= 0.3 * h) & (r <= 1.1 * h) & (np.abs(th) <= 0.6)
    img = np.where(inside, speckle((h, w), seed), 0.0)
    cyst = (xx - apex[0] - 0.55 * np.sin(0.6) * r) ** 2 + (yy - 0.6 * h) ** 2 < (0.06 * h) ** 2
    img[cyst] = 0.0  # dark structure touching the region's edge
    return annotate(img.astype(np.float32)), inside


def rectangle(h: int, w: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    top, left, bottom, right = box
    img[top:bottom, left:right] = speckle((bottom - top, right - left), seed)
    return img


def test_fan_is_found_without_text_and_colour_bar() -> None:
    img, inside = fan()
    fov = find_fov(img)
    ys, xs = np.nonzero(inside)
    truth = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    assert fov.found
    # within two cells of the coarse grid (400 px / 160 cells → 3 px cells)
    assert all(abs(a - b) <= 6 for a, b in zip(fov.box, truth)), (fov.box, truth)
    out = preprocess(img, 128)
    expected = warp_mask(inside.astype(np.int64), out.geometry).bool()
    # the hull adds the inner-arc segment of the convex probe (~2 % of the fan) and the
    # grid quantises the edges (±1.5 px along ~900 px of perimeter, ~2 %)
    assert iou(out.fov[0], expected) > 0.93
    assert out.fov_found


def test_crop_fov_fills_the_output_with_the_scan() -> None:
    img, inside = fan()
    cropped, full = preprocess(img, 128), preprocess(img, 128, crop_fov=False)
    assert cropped.fov.float().mean() > full.fov.float().mean() + 0.05
    assert full.geometry.box == (0, 0, 300, 400)
    # without cropping the text stays in the image but outside the field of view
    pt = full.geometry.pad[0]  # text rows 3..12 of 300 → 1..4 of 96, below the padding
    text = (slice(pt, pt + 5), slice(0, 40))
    assert full.image[0][text].max() > 0.2 and not full.fov[0][text].any()


def test_rectangle_linear_probe() -> None:
    img = annotate(rectangle(240, 320, (20, 60, 220, 260)))
    out = preprocess(img, 100)
    assert find_fov(img).box == pytest.approx((20, 60, 220, 260), abs=2)
    # the 200×200 scan fills the square output; the FOV is (almost) all of it
    assert out.fov.float().mean() > 0.97
    assert out.image.shape == (1, 100, 100) and out.fov.dtype == torch.bool


@pytest.mark.parametrize(
    ("shape", "scaled", "pad"),
    [((64, 64), (224, 224), (0, 0)), ((960, 1280), (168, 224), (28, 0)),
     ((1280, 960), (224, 168), (0, 28)), ((100, 50), (224, 112), (0, 56))],
)  # fmt: skip
def test_letterbox_keeps_aspect_and_pads(shape, scaled, pad) -> None:
    img = np.full(shape, 0.5, np.float32)
    out = preprocess(img, 224, detect_fov=False)
    assert out.geometry.scaled == scaled and out.geometry.pad == pad
    (pt, pl), (nh, nw) = pad, scaled
    content = out.image[0, pt : pt + nh, pl : pl + nw]
    torch.testing.assert_close(content, torch.full_like(content, 0.5))
    assert out.image.sum() == pytest.approx(0.5 * nh * nw, rel=1e-5)  # padding is zero
    assert out.fov[0].sum() == nh * nw and out.fov[0, pt : pt + nh, pl : pl + nw].all()


def test_blank_image_has_no_fov_and_is_not_cropped() -> None:
    out = preprocess(np.zeros((50, 80), np.float32), 64)
    assert not out.fov_found and out.geometry.box == (0, 0, 50, 80)
    assert out.image.abs().max() == 0 and out.fov.float().mean() == pytest.approx(40 * 64 / 64**2)


def test_rectangular_output_size() -> None:
    out = preprocess(np.full((30, 30), 0.3, np.float32), (40, 80), detect_fov=False)
    assert out.image.shape == (1, 40, 80) and out.geometry.pad == (0, 20)


def test_warp_mask_follows_the_image() -> None:
    img = rectangle(200, 300, (40, 50, 180, 250), seed=1)
    img[80:120, 100:160] = 1.0  # a bright lesion …
    labels = np.zeros(img.shape, np.int64)
    labels[80:120, 100:160] = 2  # … and its label
    out = preprocess(img, 96)
    mask = warp_mask(labels, out.geometry)
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0, 2}
    assert iou(mask == 2, out.image[0] > 0.99) > 0.85


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(64, 320), w=st.integers(64, 320),
    frac=st.tuples(st.floats(0, 0.3), st.floats(0, 0.3), st.floats(0.5, 1), st.floats(0.5, 1)),
)  # fmt: skip
@example(h=64, w=64, frac=(0.0, 0.0, 1.0, 0.96875))  # a one-cell (2 px) margin at the border
def test_rectangle_box_is_found_at_any_size(h: int, w: int, frac: tuple) -> None:
    top, left = int(frac[0] * h), int(frac[1] * w)
    bottom = min(h, top + max(16, int(frac[2] * (h - top))))
    right = min(w, left + max(16, int(frac[3] * (w - left))))
    truth = (top, left, bottom, right)
    fov = find_fov(rectangle(h, w, truth))
    cell = max(2, -(-max(h, w) // 160))  # the coarse grid's cell side, as in find_fov
    assert fov.found
    assert all(abs(x - y) <= cell for x, y in zip(fov.box, truth)), (fov.box, truth)


def test_flat_banner_is_not_tissue() -> None:
    img = rectangle(300, 300, (80, 40, 280, 260))
    img[0:40, :] = 0.45  # a grey header bar across the image, flat apart from its text
    img = annotate(img)
    top, left, bottom, right = find_fov(img).box
    assert abs(top - 80) <= 4 and abs(bottom - 280) <= 4 and abs(left - 40) <= 4


def test_phased_array_apex_is_kept() -> None:
    h, w = 320, 320
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r, th = np.hypot(xx - w / 2, yy - 10), np.arctan2(xx - w / 2, yy - 10)
    inside = (r < 300) & (np.abs(th) < 0.5) & (yy > 10)  # narrow sector, apex at row 10
    img = np.where(inside, speckle((h, w), 2), 0.0).astype(np.float32)
    # 2-px cells; the apex is kept down to where the sector is ~3 cells wide (row ~16):
    # narrower, no cell is mostly signal. Without the regrowth after the opening the
    # top would sit two cells lower (row 20).
    assert find_fov(img).box[0] <= 10 + 4 * 2


def test_scan_cut_by_an_anechoic_band_stays_whole() -> None:
    img = rectangle(240, 320, (20, 40, 220, 280))
    img[70:90, 40:280] = 0.0  # a vessel crossing the whole width
    assert find_fov(img).box == pytest.approx((20, 40, 220, 280), abs=2)


def test_real_cardiac_frame_from_pydicom() -> None:
    pydicom = pytest.importorskip("pydicom")
    import os

    from arlkit.data.decode import decode_image

    path = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files",
                        "examples_ybr_color.dcm")  # fmt: skip
    if not os.path.exists(path):
        pytest.skip("pydicom does not bundle examples_ybr_color.dcm")
    img = decode_image(open(path, "rb").read(), name=path, frame=0)  # (240, 320) echo sector
    # By eye: the sector spans rows ~20-202 and columns ~88-228, with labels on its left
    # and right, a marker dot above and a tool bar below.
    box = find_fov(img).box
    assert box == pytest.approx((20, 88, 202, 228), abs=8), box
