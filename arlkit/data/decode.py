"""Image decoding: bytes of a PNG/JPEG/BMP/TIFF/DICOM file → one luminance channel in [0, 1].

Pillow reads the ordinary formats. DICOM goes through pydicom (the optional extra
``arlkit[dicom]``), imported only when a DICOM file is met: single and multi-frame
(cine) files, ``MONOCHROME1/2``, ``RGB``, ``YBR_*`` and ``PALETTE COLOR`` photometric
interpretations, and every compressed transfer syntax for which pydicom finds a
decoder (Pillow covers JPEG baseline/extended and JPEG 2000).

Colour becomes luminance with the Rec. 601 weights ``0.299 R + 0.587 G + 0.114 B``,
which is exactly the ``Y`` of DICOM's ``YBR_FULL``: ultrasound devices store grey
B-mode images in colour containers, and colour overlays (Doppler boxes) fade to grey.

A file that cannot be decoded raises :class:`DecodeError` (the dataset turns it into
an invalid sample that is counted and listed); a missing optional dependency raises a
plain :class:`~arlkit.errors.DataError`, because it concerns every file, not one.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from arlkit.errors import DataError

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DecodeError",
    "count_frames",
    "decode_image",
    "is_dicom",
    "luminance",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")

_REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Pillow modes whose own conversion to "L" (Rec. 601, 8 bit) loses nothing we keep.
_PIL_TO_L = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}


class DecodeError(DataError):
    """One file could not be decoded (truncated, corrupt, unsupported content).

    Attributes:
        path: the file, as the manifest names it.
        reason: what went wrong, one line.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot decode image: {reason}")


def is_dicom(name: str, head: bytes | None = None) -> bool:
    """Whether a file is DICOM, by extension or by the ``DICM`` marker at byte 128."""
    if name.lower().endswith(DICOM_EXTENSIONS):
        return True
    return head is not None and len(head) >= 132 and head[128:132] == b"DICM"


def luminance(rgb: np.ndarray, max_value: float) -> np.ndarray:
    """Rec. 601 luminance of an ``(..., 3)`` array, scaled by ``max_value`` to [0, 1].

    Args:
        rgb: ``(..., 3)`` colour values in ``[0, max_value]``.
        max_value: the value of full intensity (255 for 8 bit).

    Returns:
        ``(...)`` float32 in [0, 1].
    """
    y = rgb[..., :3].astype(np.float32) @ _REC601
    return np.clip(y / np.float32(max_value), 0.0, 1.0)


def decode_image(
    source: bytes | BinaryIO, *, name: str = "", frame: int | None = None
) -> np.ndarray:
    """Decode an image file to one channel.

    Args:
        source: the file's bytes, or a seekable binary file object (lets pydicom read one
            frame of a long cine without reading the others).
        name: file name or URL; used to recognise DICOM and in error messages.
        frame: frame of a multi-frame file (DICOM cine, multi-page TIFF); ``None`` = the first.

    Returns:
        ``(H, W)`` float32 luminance in [0, 1].

    Raises:
        DecodeError: the content is not a decodable image.
        DataError: a DICOM file was met but pydicom is not installed.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    head = _peek(fp, 132)
    try:
        if is_dicom(name, head):
            return _decode_dicom(fp, frame)
        return _decode_pillow(fp, frame)
    except DataError:
        raise
    except Exception as exc:  # any failure inside a decoder means: this file is unreadable
        raise DecodeError(name or "<bytes>", f"{type(exc).__name__}: {exc}") from exc


def count_frames(source: bytes | BinaryIO, *, name: str = "") -> int:
    """Number of frames of a DICOM file (1 when it has no ``NumberOfFrames``), reading only
    its header; 1 for other formats.

    Raises:
        DecodeError: the DICOM header cannot be parsed.
        DataError: pydicom is missing.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    if not is_dicom(name, _peek(fp, 132)):
        return 1
    pydicom = _import_pydicom()
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except Exception as exc:
        raise DecodeError(name or "<bytes>", f"{type(exc).__name__}: {exc}") from exc


def _peek(fp: BinaryIO, n: int) -> bytes:
    pos = fp.tell()
    head = fp.read(n)
    fp.seek(pos)
    return head


def _decode_pillow(fp: BinaryIO, frame: int | None) -> np.ndarray:
    try:
        opened = Image.open(fp)
    except UnidentifiedImageError:  # its own message names an anonymous BytesIO
        raise ValueError(
            "not an image file Pillow can read (expected PNG/JPEG/BMP/TIFF, or DICOM)"
        ) from None
    with opened as img:
        if frame:
            n = int(getattr(img, "n_frames", 1))
            if not 0 <= frame < n:
                raise ValueError(f"frame {frame} requested, the file has {n}")
            img.seek(frame)
        img.load()  # decode now: a truncated file fails here, not later
        mode = img.mode
        if mode in _PIL_TO_L:
            arr = np.asarray(img if mode == "L" else img.convert("L"), dtype=np.uint8)
            return arr.astype(np.float32) * np.float32(1.0 / 255.0)
        arr = np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        arr = arr.astype(np.float32)
        peak = 65535.0 if arr.size == 0 or arr.max() <= 65535 else float(arr.max())
        return np.clip(arr / np.float32(peak), 0.0, 1.0)
    if mode == "F":
        return _minmax(arr.astype(np.float32))
    raise ValueError(f"unsupported Pillow image mode {mode!r}")


def _import_pydicom() -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (pydicom ≥ 3: frame-wise decoding and LUTs)
    except ImportError as exc:
        raise DataError(
            "reading DICOM files needs pydicom ≥ 3: install the extra with "
            "pip install 'arlkit[dicom]'"
        ) from exc
    return pydicom


def _decode_dicom(fp: BinaryIO, frame: int | None) -> np.ndarray:
    pydicom = _import_pydicom()
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.Dataset()
    # index=… decodes a single frame; YBR is converted to RGB by pydicom (as_rgb default).
    arr = pydicom.pixels.pixel_array(fp, ds_out=ds, index=frame or 0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        # Luminance of every possible stored value, then a lookup: one LUT pass, not H·W.
        stored = np.arange(2 ** int(ds.get("BitsStored", 8)), dtype=arr.dtype)
        rgb = apply_color_lut(stored, ds)  # (2**bits, 3), entries of `lut_bits` bits
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return luminance(rgb, 2.0**lut_bits - 1.0)[arr]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB, or YBR converted to RGB
        bits = int(ds.get("BitsStored", 8))
        return luminance(arr, 2.0**bits - 1.0)
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape} ({photometric})")
    return _monochrome(arr, ds, photometric, apply_modality_lut)


def _monochrome(arr: np.ndarray, ds: Any, photometric: str, modality_lut: Any) -> np.ndarray:
    """Grey values to [0, 1]: the stored window when there is one, else the bit range."""
    bits = int(ds.get("BitsStored", 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        values = modality_lut(arr, ds).astype(np.float64)
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
        out = _window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")).upper())
        return 1.0 - out if photometric == "MONOCHROME1" else out
    if bits <= 8:
        values = arr.astype(np.float32)
        lo = -(2.0 ** (bits - 1)) if signed else 0.0
        hi = lo + 2.0**bits - 1.0
    else:  # deep images without a stored window (CT-like): the frame's own range
        values = arr.astype(np.float32)
        lo, hi = float(values.min()), max(float(values.max()), float(values.min()) + 1.0)
    out = np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The VOI window of DICOM PS3.3 C.11.2.1.2 (as ``pydicom.pixels.apply_windowing``),
    scaled to [0, 1]: ``LINEAR`` maps ``c − ½ ± (w − 1)/2`` to 0 and 1, ``LINEAR_EXACT``
    ``c ± w/2``, ``SIGMOID`` is ``1 / (1 + exp(−4 (x − c) / w))``."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp → inf far below the window: 1/inf = 0
            out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        out = (values - center) / max(width, 1e-6) + 0.5
    else:  # LINEAR, the default (unknown functions too)
        if width <= 1.0:  # a threshold at c − ½
            out = (values > center - 0.5).astype(np.float64)
        else:
            out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _minmax(arr: np.ndarray) -> np.ndarray:
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
    return (arr - np.float32(lo)) / np.float32(max(hi - lo, 1e-12))
