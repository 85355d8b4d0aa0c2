"""Map-style datasets: :class:`ManifestDataset` (real files) and :class:`ViewDataset` (views).

:class:`ManifestDataset` reads one row of a manifest per item — fetch through fsspec,
decode, preprocess — and returns the sample dict every arlkit dataset returns::

    {"image": (1, S, S) float in [0, 1], "fov": (1, S, S) bool, "organ": int,
     "label": int (-1 if none), "probe": str, "id": str, "patient_id": str,
     "valid": True, "frame": int, "depth_cm": float (NaN if not recorded)}
    (+ "mask": (S, S) int64 when the manifest has masks)

An unreadable file does not raise: the item is ``{"valid": False, "id": path,
"error": reason, ...}`` (no image). :func:`arlkit.data.collate.collate` drops it from
the batch and reports it; :class:`arlkit.data.collate.BadFileLog` counts, lists and
stops the run when too many fail. Nothing is ever replaced by another sample.

:class:`ViewDataset` applies a views transform deterministically: item ``i`` of epoch
``e`` uses a generator seeded from ``(seed, e, i)``, so the crops of a sample do not
depend on the worker, the process or the order it is read in — resuming reproduces them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arlkit.data.decode import DICOM_EXTENSIONS, DecodeError, decode_image
from arlkit.data.manifest import Manifest, load_manifest
from arlkit.data.preprocess import preprocess, warp_mask
from arlkit.data.sampler import view_seed
from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["NO_MASK", "ManifestDataset", "ViewDataset", "view_seed"]

#: Mask value of rows without a mask in a manifest that has masks (``cross_entropy``'s
#: default ``ignore_index``).
NO_MASK = -100


class ManifestDataset(Dataset):
    """Images listed by a manifest (or a folder tree of organ sub-folders).

    Args:
        path: manifest file or folder, local or fsspec URL; or a loaded :class:`Manifest`.
        taxonomy: organ classes (default: the 16-class default).
        size: output side ``S``: images are letterboxed to ``S × S``.
        crop_fov: crop to the detected scan region (fan or rectangle) first.
        split: keep only rows of this split (``None``: all rows).
        max_bad_fraction: fraction of unreadable files a run tolerates (read by the engine's
            :class:`~arlkit.data.collate.BadFileLog`).
        storage_options: fsspec options (credentials, endpoints …).
        expand_frames: one item per frame of multi-frame DICOM files.
        detect_fov: find the scan region; False = the whole image is the field of view
            (natural images, data cropped already).
        fov_threshold: grey level separating signal from background for the detection.

    Attributes:
        organ_indices: ``(N,)`` taxonomy index per item (for the organ-balanced sampler).
        classes: downstream label names when the manifest gives names.
        max_bad_fraction: what :class:`~arlkit.data.collate.BadFileLog` should tolerate.

    With a ``mask`` column every item carries ``"mask"`` ``(S, S)`` int64: labels warped
    like the image (0 in the padding), or :data:`NO_MASK` everywhere for rows without one.

    Raises:
        DataError: the manifest cannot be read, or its labels are invalid.
        ConfigError: bad parameter values.
    """

    def __init__(
        self,
        path: str | Manifest,
        taxonomy: Taxonomy | None = None,
        size: int = 224,
        crop_fov: bool = True,
        split: str | None = None,
        max_bad_fraction: float = 0.01,
        storage_options: dict[str, Any] | None = None,
        expand_frames: bool = True,
        detect_fov: bool = True,
        fov_threshold: float = 0.02,
    ) -> None:
        if size <= 0:
            raise ConfigError(f"dataset 'manifest': size must be positive, got {size}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(
                f"dataset 'manifest': max_bad_fraction must be in [0, 1], got {max_bad_fraction}"
            )
        if isinstance(path, Manifest):
            manifest = path
        else:
            manifest = load_manifest(
                path, taxonomy, storage_options=storage_options, expand_frames=expand_frames
            )
        if split is not None:
            manifest = manifest.with_split(split)
        self.manifest = manifest
        self.taxonomy = manifest.taxonomy
        self.size, self.crop_fov, self.detect_fov = int(size), crop_fov, detect_fov
        self.fov_threshold = float(fov_threshold)
        self.max_bad_fraction = float(max_bad_fraction)
        self.storage_options: Mapping[str, Any] = manifest.storage_options
        self.organ_indices: np.ndarray = manifest.organ
        self.classes: list[str] = list(manifest.classes)

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"ManifestDataset({self.manifest.source!r}, {len(self)} items, size={self.size})"

    def sample_id(self, i: int) -> str:
        """Identifier of item ``i``: its path, plus ``#frame=k`` for a frame of a cine."""
        frame = int(self.manifest.frame[i])
        path = self.manifest.paths[i]
        return f"{path}#frame={frame}" if frame >= 0 else path

    def __getitem__(self, i: int) -> dict[str, Any]:
        m = self.manifest
        if not -len(m) <= i < len(m):
            raise IndexError(f"index {i} out of range for {len(m)} items")
        i = i % len(m)
        sample: dict[str, Any] = {
            "organ": int(m.organ[i]), "label": int(m.label[i]), "probe": m.probe[i],
            "id": self.sample_id(i), "patient_id": m.patient_id[i], "frame": int(m.frame[i]),
            "depth_cm": m.depth_at(i),
        }  # fmt: skip
        try:
            img = self._decode(m.paths[i], int(m.frame[i]))
            out = preprocess(
                img, self.size, crop_fov=self.crop_fov, detect_fov=self.detect_fov,
                threshold=self.fov_threshold,
            )  # fmt: skip
            if m.has_masks:
                sample["mask"] = self._mask(m.mask[i], img.shape, out.geometry)
        except (DecodeError, OSError) as exc:
            reason = exc.reason if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
            return {**sample, "valid": False, "error": reason}
        return {**sample, "image": out.image, "fov": out.fov, "valid": True}

    def _open(self, url: str) -> Any:
        if "://" not in url:
            return open(url, "rb")  # local: skip fsspec's dispatch on the hot path
        return fsspec.open(url, "rb", **self.storage_options).open()

    def _decode(self, url: str, frame: int) -> np.ndarray:
        with self._open(url) as f:
            if frame >= 0 and url.lower().endswith(DICOM_EXTENSIONS):
                return decode_image(f, name=url, frame=frame)  # seeks to the one frame
            data = f.read()
        return decode_image(data, name=url, frame=frame if frame >= 0 else None)

    def _mask(self, url: str | None, shape: tuple[int, ...], geometry: Any) -> torch.Tensor:
        if url is None:
            return torch.full((self.size, self.size), NO_MASK, dtype=torch.int64)
        with self._open(url) as f:
            data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise DecodeError(url, f"mask must be a one-channel label image, got {im.mode}")
                labels = np.asarray(im)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(url, f"mask: {type(exc).__name__}: {exc}") from exc
        if labels.shape != tuple(shape):
            raise DecodeError(url, f"mask is {labels.shape}, its image is {tuple(shape)}")
        return warp_mask(labels, geometry)


class ViewDataset(Dataset):
    """A dataset whose items pass through a views transform, deterministically.

    Args:
        dataset: map-style dataset of sample dicts (with ``organ_indices``).
        transform: called as ``transform(sample, generator=g)`` (see
            :class:`arlkit.data.views.MultiCropViews`).
        seed: base seed of the views; a recipe's ``seed`` gives the views ``arlkit run``
            trains on (:func:`~arlkit.data.sampler.view_seed`).

    Call :meth:`set_epoch` before each epoch (DataLoader workers copy the dataset when an
    iterator starts, so use ``persistent_workers=False`` or recreate the loader).
    Invalid samples pass through untouched. An item is an index, or an ``(index, draw)``
    pair from ``OrganBalancedSampler(..., draws=True)``: each draw of an image that comes
    again in the epoch then gets views of its own (draw 0 has the index's views).
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[..., dict[str, Any]],
        seed: int = 0,
    ) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.epoch = 0

    @property
    def organ_indices(self) -> Any:
        return self.dataset.organ_indices

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, draw = (key, 0) if not isinstance(key, tuple) else (int(key[0]), int(key[1]))
        sample = self.dataset[i]
        if not sample.get("valid", True):
            return sample
        generator = torch.Generator().manual_seed(view_seed(self.seed, self.epoch, int(i), draw))
        return self.transform(sample, generator=generator)
