"""Ultrasound data: manifests, decoding, preprocessing, sampling, training views.

Real files::

    from arlkit.data import ManifestDataset, MultiCropViews, OrganBalancedSampler, ViewDataset
    from arlkit.data.collate import collate

    ds = ManifestDataset("s3://bucket/us/manifest.parquet", size=256)   # or a folder tree
    views = ViewDataset(ds, MultiCropViews(), seed=0)
    loader = DataLoader(views, batch_size=64, collate_fn=collate,
                        sampler=OrganBalancedSampler(ds.organ_indices, temperature=0.5,
                                                     draws=True))  # repeats: fresh views

The embedded synthetic corpus lives in :mod:`arlkit.data.synthetic`
(``SyntheticUltrasound``, ``SyntheticTask``; also reachable from here, imported lazily).
Nothing here imports pluggy, pydantic or rich; pydicom and pyarrow are imported only
when a DICOM file or a Parquet manifest is met. The functions ``collate`` and
``preprocess`` are not re-exported here, so that they do not hide the modules of the
same name: import them from :mod:`arlkit.data.collate` and :mod:`arlkit.data.preprocess`.
"""

from __future__ import annotations

from typing import Any

from arlkit.data.collate import BadFileLog
from arlkit.data.columns import StringColumn
from arlkit.data.dataset import NO_MASK, ManifestDataset, ViewDataset, view_seed
from arlkit.data.decode import DecodeError, count_frames, decode_image
from arlkit.data.fov import FieldOfView, find_fov
from arlkit.data.manifest import PROBES, Manifest, load_manifest, resolve_path
from arlkit.data.preprocess import Geometry, Preprocessed, warp_mask
from arlkit.data.sampler import OrganBalancedSampler, organ_shares
from arlkit.data.views import MultiCropViews, single_view

__all__ = [
    "NO_MASK",
    "PROBES",
    "BadFileLog",
    "DecodeError",
    "FieldOfView",
    "Geometry",
    "Manifest",
    "ManifestDataset",
    "MultiCropViews",
    "OrganBalancedSampler",
    "Preprocessed",
    "SyntheticTask",
    "StringColumn",
    "SyntheticUltrasound",
    "ViewDataset",
    "count_frames",
    "decode_image",
    "find_fov",
    "load_manifest",
    "organ_shares",
    "resolve_path",
    "single_view",
    "view_seed",
    "warp_mask",
]

_LAZY = {"SyntheticUltrasound", "SyntheticTask"}


def __getattr__(name: str) -> Any:
    # The simulator is a sizeable import; load it only when asked for.
    if name in _LAZY:
        from arlkit.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'arlkit.data' has no attribute {name!r}")
