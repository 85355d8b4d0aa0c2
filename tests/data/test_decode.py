"""Decoding real files: Pillow formats, DICOM (pydicom's bundled ultrasound files), corrupt files."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from arlkit.data.decode import DecodeError, count_frames, decode_image, is_dicom, luminance
from arlkit.errors import DataError

pydicom = pytest.importorskip("pydicom")

REC601 = np.array([0.299, 0.587, 0.114])


def bundled(name: str) -> str:
    """A test file shipped inside pydicom (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files", name)
    if not os.path.exists(path):
        pytest.skip(f"pydicom does not bundle {name}")
    assert get_testdata_file(name, download=False) == path
    return path


def write_dicom(frames: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    """An uncompressed 8-bit DICOM of ``(F, H, W)`` frames (cine when F > 1)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    n, h, w = frames.shape
    ds.Rows, ds.Columns, ds.SamplesPerPixel = h, w, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if n > 1:
        ds.NumberOfFrames = n
    ds.PixelData = frames.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, 53), dtype=np.uint8)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (29, 41, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_gray_formats_roundtrip_exactly(fmt: str, gray: np.ndarray) -> None:
    out = decode_image(encode(Image.fromarray(gray), fmt), name=f"x.{fmt.lower()}")
    assert out.dtype == np.float32 and out.shape == gray.shape
    np.testing.assert_allclose(out, gray / 255.0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_rgb_becomes_rec601_luminance(fmt: str, rgb: np.ndarray) -> None:
    out = decode_image(encode(Image.fromarray(rgb), fmt), name="x")
    expected = rgb.astype(np.float64) @ REC601 / 255.0
    np.testing.assert_allclose(out, expected, atol=1.0 / 255)  # Pillow rounds to 8 bit


def test_jpeg_is_close_to_its_source(gray: np.ndarray) -> None:
    smooth = np.tile(np.linspace(0, 255, 53), (37, 1)).astype(np.uint8)
    out = decode_image(encode(Image.fromarray(smooth), "JPEG", quality=95), name="x.jpg")
    assert np.abs(out - smooth / 255.0).mean() < 0.01


def test_16bit_png_keeps_precision() -> None:
    values = np.array([[0, 1, 257], [32768, 65534, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    out = decode_image(encode(img, "PNG"), name="x.png")
    np.testing.assert_allclose(out, values / 65535.0, rtol=0, atol=1e-7)


def test_palette_png_uses_palette_luminance() -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    img = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    img.putpalette(palette)
    out = decode_image(encode(img, "PNG"), name="p.png")
    np.testing.assert_allclose(out[0], REC601, atol=1.0 / 255)


def test_multipage_tiff_frames() -> None:
    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    data = buf.getvalue()
    assert decode_image(data, name="c.tif", frame=1).max() == pytest.approx(200 / 255)
    assert decode_image(data, name="c.tif").max() == pytest.approx(10 / 255)
    with pytest.raises(DecodeError, match="frame 2"):
        decode_image(data, name="c.tif", frame=2)


def test_truncated_png_is_a_decode_error(gray: np.ndarray) -> None:
    data = encode(Image.fromarray(gray), "PNG")
    with pytest.raises(DecodeError, match="truncated") as info:
        decode_image(data[: len(data) // 2], name="cut.png")
    assert info.value.path == "cut.png"


@pytest.mark.parametrize("name", ["noise.dcm", "noise.png", "noise"])
def test_random_bytes_are_a_decode_error(name: str) -> None:
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError):
        decode_image(data, name=name)


def test_unknown_content_reason_is_readable() -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(b"hello, not an image", name="notes.png")
    assert info.value.reason.startswith("ValueError: not an image file Pillow can read")
    assert "BytesIO" not in str(info.value)  # Pillow's own message names an anonymous buffer


def test_is_dicom_by_extension_or_magic() -> None:
    assert is_dicom("A.DCM") and is_dicom("b.dicom")
    assert is_dicom("noext", b"\0" * 128 + b"DICM")
    assert not is_dicom("x.png", b"\x89PNG" + b"\0" * 200)


def test_luminance_weights() -> None:
    px = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)
    np.testing.assert_allclose(luminance(px, 255.0), [0.299, 0.587, 0.114, 1.0], atol=1e-6)


# ---------------------------------------------------------------------------- DICOM


def test_dicom_rgb_ultrasound() -> None:
    path = bundled("examples_rgb_color.dcm")
    arr = pydicom.dcmread(path).pixel_array
    out = decode_image(open(path, "rb").read(), name=path)
    np.testing.assert_allclose(out, arr.astype(np.float64) @ REC601 / 255.0, atol=1e-5)


def test_dicom_ybr_jpeg_cine_frames_are_the_luma() -> None:
    path = bundled("examples_ybr_color.dcm")  # 30-frame JPEG baseline YBR_FULL_422 cine
    data = open(path, "rb").read()
    assert count_frames(data, name=path) == 30
    frames = {k: decode_image(io.BytesIO(data), name=path, frame=k) for k in (0, 5, 29)}
    y = pydicom.pixels.pixel_array(path, index=5, raw=True)[..., 0] / 255.0  # stored Y channel
    assert np.abs(frames[5] - y).mean() < 0.5 / 255 and np.abs(frames[5] - y).max() < 8 / 255
    assert not np.array_equal(frames[0], frames[29])
    np.testing.assert_array_equal(decode_image(data, name=path), frames[0])


def test_dicom_jpeg2000_through_pillow() -> None:
    path = bundled("examples_jpeg2k.dcm")  # JPEG 2000 lossless, YBR_RCT
    expected = pydicom.dcmread(path).pixel_array.astype(np.float64) @ REC601 / 255.0
    out = decode_image(open(path, "rb").read(), name=path)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_dicom_palette_color() -> None:
    path = bundled("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    bits = ds.RedPaletteColorLookupTableDescriptor[2]
    out = decode_image(open(path, "rb").read(), name=path)
    np.testing.assert_allclose(out, rgb.astype(np.float64) @ REC601 / (2**bits - 1), atol=1e-5)


def test_dicom_monochrome2_and_monochrome1() -> None:
    frames = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    mono2 = write_dicom(frames, "MONOCHROME2")
    mono1 = write_dicom(frames, "MONOCHROME1")
    assert count_frames(mono2, name="c.dcm") == 2
    np.testing.assert_allclose(decode_image(mono2, name="c.dcm", frame=1), frames[1] / 255.0, atol=1e-6)
    np.testing.assert_allclose(decode_image(mono1, name="c.dcm", frame=1), 1 - frames[1] / 255.0, atol=1e-6)
    # recognised by the DICM marker when the name says nothing
    np.testing.assert_allclose(decode_image(mono2, name="noext"), frames[0] / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    ("center", "width", "function", "photometric"),
    [(128, 256, None, "MONOCHROME2"), (100, 50, None, "MONOCHROME2"),
     (90, 40, "LINEAR_EXACT", "MONOCHROME2"), (120, 60, "SIGMOID", "MONOCHROME2"),
     (100, 50, None, "MONOCHROME1"), (-20, 30, None, "MONOCHROME2")],
)  # fmt: skip
def test_dicom_window_is_pydicoms(center, width, function, photometric) -> None:
    # the stored VOI window as DICOM PS3.3 C.11.2.1.2 defines it (pydicom.apply_windowing,
    # output range y_min..y_max scaled to [0, 1]): with c=128, w=256 the stored 255 is 1.0
    ds = pydicom.dcmread(io.BytesIO(write_dicom(np.arange(256).reshape(1, 16, 16))))
    ds.WindowCenter, ds.WindowWidth, ds.PhotometricInterpretation = center, width, photometric
    if center < 0:  # a rescale: the window is in output units
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -60
    if function:
        ds.VOILUTFunction = function
    buf = io.BytesIO()
    ds.save_as(buf)
    values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    y_min, y_max = (-60.0, 67.5) if center < 0 else (0.0, 255.0)
    expected = (pydicom.pixels.apply_windowing(values, ds) - y_min) / (y_max - y_min)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(decode_image(buf.getvalue(), name="w.dcm"), expected, atol=1e-6)


def test_dicom_deep_monochrome_uses_window_or_range() -> None:
    path = bundled("CT_small.dcm")  # 16-bit
    out = decode_image(open(path, "rb").read(), name=path)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.05


def test_count_frames_of_other_formats_is_one(gray: np.ndarray) -> None:
    assert count_frames(encode(Image.fromarray(gray), "PNG"), name="x.png") == 1


def test_missing_pydicom_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_dicom(np.zeros((1, 2, 2)))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"arlkit\[dicom\]") as info:
        decode_image(data, name="x.dcm")
    assert not isinstance(info.value, DecodeError)  # every DICOM is affected: not a bad file
