"""Registers arlkit's built-in data through the same hooks a third-party plugin uses.

- datasets: ``manifest`` (real files: folder tree or CSV/JSONL/Parquet manifest).
- transforms: ``multicrop`` (global + local views), ``single`` (one global view).

The synthetic corpus registers itself in :mod:`arlkit.data.synthetic.plugin`.
"""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl
from arlkit.registry import Registrar


def manifest(
    taxonomy: Any,
    path: str,
    size: int = 224,
    crop_fov: bool = True,
    split: str | None = None,
    max_bad_fraction: float = 0.01,
    storage_options: dict[str, Any] | None = None,
    expand_frames: bool = True,
    detect_fov: bool = True,
    fov_threshold: float = 0.02,
) -> Any:
    """Images listed by a manifest (CSV/JSONL/Parquet) or a folder of organ sub-folders."""
    from arlkit.data.dataset import ManifestDataset

    return ManifestDataset(
        path, taxonomy, size=size, crop_fov=crop_fov, split=split,
        max_bad_fraction=max_bad_fraction, storage_options=storage_options,
        expand_frames=expand_frames, detect_fov=detect_fov, fov_threshold=fov_threshold,
    )  # fmt: skip


def multicrop(
    global_size: int = 224,
    local_size: int = 96,
    n_global: int = 2,
    n_local: int = 8,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    min_fov_fraction: float = 0.5,
    gain: float = 0.1,
    contrast: float = 0.3,
    gamma: float = 0.3,
    attenuation: float = 0.2,
    p_intensity: float = 0.8,
    flip: bool = True,
    no_flip_organs: list[str] | None = None,
    blur_prob: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 1.0),
    clean_global: bool = False,
    **injected: Any,
) -> Any:
    """Global and local crops inside the field of view, with ultrasound augmentation."""
    from arlkit.data.views import MultiCropViews

    return MultiCropViews(
        global_size, local_size, n_global, n_local, global_scale, local_scale, ratio,
        min_fov_fraction, gain, contrast, gamma, attenuation, p_intensity, flip,
        no_flip_organs, blur_prob, blur_sigma, clean_global, taxonomy=injected.get("taxonomy"),
    )  # fmt: skip


def single(
    size: int = 224,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    min_fov_fraction: float = 0.5,
    gain: float = 0.1,
    contrast: float = 0.3,
    gamma: float = 0.3,
    attenuation: float = 0.2,
    p_intensity: float = 0.8,
    flip: bool = True,
    no_flip_organs: list[str] | None = None,
    clean_global: bool = False,
    **injected: Any,
) -> Any:
    """One global view, no local crops (MIM-only recipes, MAE)."""
    from arlkit.data.views import single_view

    return single_view(
        size, scale, ratio, min_fov_fraction, gain, contrast, gamma, attenuation,
        p_intensity, flip, no_flip_organs, clean_global, taxonomy=injected.get("taxonomy"),
    )  # fmt: skip


@hookimpl
def arlkit_register_datasets(register: Registrar) -> None:
    register.add("manifest", manifest)


@hookimpl
def arlkit_register_transforms(register: Registrar) -> None:
    register.add("multicrop", multicrop)
    register.add("single", single)
