"""Manifests: which images to read, with their organ and the other per-image facts.

Sources, local or remote through fsspec (``file://``, ``s3://``, ``memory://`` …):

- a **folder tree** ``ROOT/<organ>/**/<image>``: each top-level folder names an organ
  (``unknown`` allowed); files directly in ``ROOT`` are ignored, as torchvision's
  ``ImageFolder`` does;
- a **manifest file**: CSV (``.csv``, ``.tsv``), JSON lines (``.jsonl``, ``.ndjson``) or
  Parquet (``.parquet``, ``.pq``; needs pyarrow, extra ``arlkit[parquet]``) with the
  column ``path`` and the optional columns ``organ, probe, split, label, mask,
  patient_id, frame, depth_cm``. Column names are matched case-insensitively; others are
  ignored.

Paths are resolved relative to the manifest's folder unless they carry a protocol
(``s3://…``) or are absolute. A missing or empty organ is ``unknown``; an organ outside
the taxonomy is an error naming the rows (all of them, at once). ``probe`` is one of
``linear, convex, phased, unknown``. ``label`` (a downstream class) may be integers or
names; names become indices into the sorted list :attr:`Manifest.classes`. ``depth_cm`` is
the imaging depth in centimetres (a positive number; empty = not recorded), side
information for conditioners that read it (:mod:`arlkit.data.condition`).

DICOM cines become one row per frame (``frame`` = 0, 1, …), reading only the headers,
unless the manifest already has a ``frame`` column or ``expand_frames=False``.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from arlkit.data.columns import StringColumn
from arlkit.data.decode import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, DecodeError, count_frames
from arlkit.errors import DataError, closest
from arlkit.taxonomy import Taxonomy

__all__ = [
    "COLUMNS",
    "MANIFEST_SUFFIXES",
    "PROBES",
    "Manifest",
    "StringColumn",
    "load_manifest",
    "resolve_path",
    "row_list",
]

PROBES: tuple[str, ...] = ("linear", "convex", "phased", "unknown")
_PROBE_ALIASES = {"curvilinear": "convex", "curved": "convex", "sector": "phased", "": "unknown"}
COLUMNS: tuple[str, ...] = (
    "path", "organ", "probe", "split", "label", "mask", "patient_id", "frame", "depth_cm",
)  # fmt: skip
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq")


@dataclass
class Manifest:
    """Column-wise table of images (cheap for millions of rows; string columns are
    :class:`StringColumn` s, which index and compare like lists).

    Attributes:
        source: where it was read from.
        paths: resolved file URLs (plain paths for local files).
        organ: ``(N,)`` int64 taxonomy indices (``taxonomy.unknown_index`` = unknown).
        probe: probe type per row.
        split: split name per row (``""`` if none).
        label: ``(N,)`` int64 downstream class, ``-1`` if none.
        mask: resolved mask URL per row, or None.
        patient_id: per row (``""`` if none).
        frame: ``(N,)`` int64 frame of a multi-frame file, ``-1`` for the file as a whole.
        classes: label names when labels were given as names, else empty.
        has_masks: whether the source has a mask column.
        storage_options: fsspec options used to read it (and its files).
        depth_cm: ``(N,)`` float32 imaging depth in cm, NaN where not recorded (None: none
            recorded at all).
    """

    source: str
    taxonomy: Taxonomy
    paths: StringColumn
    organ: np.ndarray
    probe: StringColumn
    split: StringColumn
    label: np.ndarray
    mask: StringColumn
    patient_id: StringColumn
    frame: np.ndarray
    classes: list[str] = field(default_factory=list)
    has_masks: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    depth_cm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict of plain Python values."""
        return {
            "path": self.paths[i], "organ": int(self.organ[i]), "probe": self.probe[i],
            "split": self.split[i], "label": int(self.label[i]), "mask": self.mask[i],
            "patient_id": self.patient_id[i], "frame": int(self.frame[i]),
            "depth_cm": self.depth_at(i),
        }  # fmt: skip

    def depth_at(self, i: int) -> float:
        """Imaging depth of row ``i`` in cm (NaN: not recorded)."""
        return float("nan") if self.depth_cm is None else float(self.depth_cm[i])

    def select(self, indices: Sequence[int] | np.ndarray) -> Manifest:
        """A manifest of the given rows, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Manifest(
            self.source, self.taxonomy, self.paths.take(idx), self.organ[idx],
            self.probe.take(idx), self.split.take(idx), self.label[idx], self.mask.take(idx),
            self.patient_id.take(idx), self.frame[idx], list(self.classes), self.has_masks,
            dict(self.storage_options), None if self.depth_cm is None else self.depth_cm[idx],
        )  # fmt: skip

    def with_split(self, split: str) -> Manifest:
        """Rows whose ``split`` equals ``split``.

        Raises:
            DataError: no row has that split (the message lists the splits present).
        """
        keep = [i for i, s in enumerate(self.split) if s == split]
        if not keep:
            present = sorted(set(self.split))
            raise DataError(
                f"{self.source}: no rows with split {split!r} (splits present: "
                f"{', '.join(repr(s) for s in present)}); choose one of them or split: null"
            )
        return self.select(keep)


def resolve_path(path: str, base: str) -> str:
    """Resolve a manifest entry against the manifest's folder.

    Args:
        path: as written in the manifest: a URL with a protocol, an absolute path, or a
            path relative to the manifest.
        base: the folder the manifest lives in (a URL or a local path).

    Returns:
        The URL (or local path) to open; absolute paths stay on the manifest's filesystem.
    """
    if "://" in path:
        return path
    protocol, sep, root = base.partition("://")
    if not sep:  # local manifest
        return posixpath.normpath(path if path.startswith("/") else posixpath.join(base, path))
    joined = posixpath.normpath(path if path.startswith("/") else posixpath.join(root or "/", path))
    return f"{protocol}://{_root_marker(protocol)}{joined.lstrip('/')}"


@functools.cache
def _root_marker(protocol: str) -> str:
    """``"/"`` for filesystems whose paths start at a root (local, memory), else ``""``."""
    try:
        return str(fsspec.get_filesystem_class(protocol).root_marker)
    except (ImportError, ValueError):  # implementation not installed: bucket-style paths
        return ""


def load_manifest(
    source: str,
    taxonomy: Taxonomy | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    expand_frames: bool = True,
) -> Manifest:
    """Read a folder tree or a manifest file.

    Args:
        source: folder of organ sub-folders, or a CSV/TSV/JSONL/Parquet file; local or URL.
        taxonomy: organ classes (default: the 16-class default).
        storage_options: passed to fsspec (credentials, endpoints …).
        expand_frames: one row per frame for multi-frame DICOM files.

    Returns:
        The manifest, rows in file order (folder trees: sorted by path).

    Raises:
        DataError: missing source, unknown format, missing ``path`` column, organs outside
            the taxonomy or bad probe names (naming the rows), no images.
    """
    taxonomy = taxonomy or Taxonomy()
    options = dict(storage_options or {})
    if "://" not in source:
        source = os.path.abspath(os.path.expanduser(source))
    fs, root = fsspec.core.url_to_fs(source, **options)
    if not fs.exists(root):
        raise DataError(f"data path {source!r} does not exist; check the dataset's 'path'")
    if fs.isdir(root):
        records, base = _scan_tree(fs, root, source, taxonomy), ""
    else:
        records, base = _read_table(fs, root, source), _parent(source)
    if not records:
        raise DataError(
            f"{source}: no images found (expected organ sub-folders of "
            f"{'/'.join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS)} files, or manifest rows)"
        )
    manifest = _to_columns(records, source, base, taxonomy, options)
    if expand_frames and not any("frame" in r for r in records):
        manifest = _expand_frames(manifest)
    return manifest


def _parent(url: str) -> str:
    protocol, sep, path = url.partition("://")
    return f"{protocol}://{posixpath.dirname(path)}" if sep else posixpath.dirname(url) or "."


def _scan_tree(fs: Any, root: str, source: str, taxonomy: Taxonomy) -> list[dict[str, Any]]:
    suffixes = IMAGE_EXTENSIONS + DICOM_EXTENSIONS
    folders = sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p))
    names = {posixpath.basename(p.rstrip("/")): p for p in folders}
    bad = [n for n in names if n.lower() not in taxonomy.names and not n.startswith(".")]
    if bad:
        hints = {n: closest(n.lower(), taxonomy.names) for n in bad}
        listed = ", ".join(f"{n!r}" + (f" (did you mean {h!r}?)" if h else "") for n, h in hints.items())
        raise DataError(
            f"{source}: folder(s) {listed} are not organs of the taxonomy "
            f"({', '.join(taxonomy.names)}); rename them or extend taxonomy.organs"
        )
    records = []
    protocol = source.partition("://")[0] if "://" in source else ""
    for name, folder in sorted(names.items(), key=lambda item: item[0].lower()):
        if name.startswith("."):
            continue
        for path in sorted(fs.find(folder)):
            if path.lower().endswith(suffixes) and not posixpath.basename(path).startswith("."):
                url = fs.unstrip_protocol(path) if protocol else path
                records.append({"path": url, "organ": name.lower()})
    return records


def _read_table(fs: Any, root: str, source: str) -> list[dict[str, Any]]:
    suffix = posixpath.splitext(root.lower())[1]
    if suffix not in MANIFEST_SUFFIXES:
        raise DataError(
            f"{source}: unknown manifest format {suffix or '(no extension)'!r}; use a folder "
            f"of organ sub-folders or one of {', '.join(MANIFEST_SUFFIXES)}"
        )
    if suffix in (".parquet", ".pq"):
        rows = _read_parquet(fs, root, source)
    else:
        with fs.open(root, "rt", encoding="utf-8-sig", newline="") as f:
            text = f.read()
        if suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{source}: line {n} is not JSON: {exc}") from None
    _check_column_names(rows, source)
    out = []
    for n, row in enumerate(rows, 1):
        if row.get(None):  # csv.DictReader puts the fields beyond the header under None
            raise DataError(
                f"{source}: row {n} has {len(row) - 1 + len(row[None])} fields, the header "
                f"{len(row) - 1}: extra values {row[None]!r} (rows count from 1 after the "
                "header); quote fields that contain the delimiter, or fix the row"
            )
        norm = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        out.append({k: norm[k] for k in COLUMNS if k in norm})
    if out and not all("path" in r for r in out):
        raise DataError(f"{source}: the manifest needs a 'path' column (columns: {', '.join(COLUMNS)})")
    return out


def _check_column_names(rows: list[dict[Any, Any]], source: str) -> None:
    """Other columns are kept out of the way (metadata), but one that looks like a misspelt
    column the manifest lacks (``Organ_Name`` without ``organ``) would silently turn every
    organ into ``unknown``: that is an error naming the column."""
    keys: set[Any] = set()
    for row in rows:  # JSON lines may differ in their keys
        keys.update(row)
    header = {str(k).strip().lower() for k in keys if k is not None}
    missing = [c for c in COLUMNS if c not in header]
    for col in sorted(header - set(COLUMNS)):
        words = col.replace(" ", "_").replace("-", "_").split("_")
        hint = next((c for c in missing if c in (words[0], words[-1])), None)  # organ_name
        if hint is None:
            near = difflib.get_close_matches(col, missing, n=1, cutoff=0.8)  # organs, patient
            hint = near[0] if near else None
        if hint:
            raise DataError(
                f"{source}: column {col!r} is not one arlkit reads; did you mean {hint!r}? "
                f"Rename it to {hint!r}, or give it a name unlike {hint!r} if it is other "
                f"metadata (columns read: {', '.join(COLUMNS)})"
            )


def _read_parquet(fs: Any, root: str, source: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{source}: reading Parquet manifests needs pyarrow: pip install 'arlkit[parquet]'"
        ) from None
    with fs.open(root, "rb") as f:
        return pq.read_table(f).to_pylist()


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _to_columns(
    records: list[dict[str, Any]], source: str, base: str, taxonomy: Taxonomy,
    options: dict[str, Any],
) -> Manifest:  # fmt: skip
    n = len(records)
    organ = np.empty(n, dtype=np.int64)
    bad_organs: dict[str, list[int]] = {}
    bad_probes: dict[str, list[int]] = {}
    probes, labels_raw = [], []
    lookup = {name: i for i, name in enumerate(taxonomy.names)}
    for i, r in enumerate(records):
        name = _text(r.get("organ")).lower() or "unknown"
        if name in lookup:
            organ[i] = lookup[name]
        else:
            organ[i] = taxonomy.unknown_index
            bad_organs.setdefault(_text(r.get("organ")), []).append(i + 1)
        probe = _text(r.get("probe")).lower()
        probe = _PROBE_ALIASES.get(probe, probe)
        if probe not in PROBES:
            bad_probes.setdefault(probe, []).append(i + 1)
        probes.append(probe)
        labels_raw.append(_text(r.get("label")))
    problems = [
        f"unknown organ {label!r}" + (f" (did you mean {closest(label.lower(), taxonomy.names)!r}?)"
                                      if closest(label.lower(), taxonomy.names) else "")
        + f" in {row_list(rows)}"
        for label, rows in bad_organs.items()
    ] + [f"unknown probe {p!r} in {row_list(rows)} (probes: {', '.join(PROBES)})"
         for p, rows in bad_probes.items()]  # fmt: skip
    if problems:
        todo = []
        if bad_organs:
            todo.append(f"the taxonomy is {', '.join(taxonomy.names)}: fix the labels or "
                        "extend taxonomy.organs")
        if bad_probes:
            todo.append(f"write the probe as one of {', '.join(PROBES)} (or leave it empty)")
        raise DataError(
            f"{source}: " + "; ".join(problems) + ". Rows count from 1 after the header; "
            + "; ".join(todo)
        )
    label, classes = _labels(labels_raw, source)
    root = base if base else None
    has_masks = any("mask" in r for r in records)
    paths = [_resolve(_text(r["path"]), root) for r in records]
    masks = [
        _resolve(_text(r.get("mask")), root) if _text(r.get("mask")) else None for r in records
    ]
    frames = np.array([_frame(r.get("frame"), i, source) for i, r in enumerate(records)],
                      dtype=np.int64)
    depth = _depths(records, source) if any("depth_cm" in r for r in records) else None
    return Manifest(
        source, taxonomy, StringColumn(paths), organ, StringColumn(probes),
        StringColumn(_text(r.get("split")) for r in records), label, StringColumn(masks),
        StringColumn(_text(r.get("patient_id")) for r in records), frames, classes, has_masks,
        options, depth,
    )  # fmt: skip


def _resolve(path: str, base: str | None) -> str:
    if base is None:
        return path
    return resolve_path(path, base)


def _frame(value: Any, i: int, source: str) -> int:
    text = _text(value)
    try:
        return int(float(text)) if text else -1
    except ValueError:
        raise DataError(f"{source}: row {i + 1}: frame {text!r} is not an integer") from None


def _depths(records: list[dict[str, Any]], source: str) -> np.ndarray:
    """The ``depth_cm`` column: positive finite numbers, NaN where empty.

    Raises:
        DataError: every row whose value is not a positive number, at once.
    """
    out = np.full(len(records), np.nan, dtype=np.float32)
    bad: list[int] = []
    for i, r in enumerate(records):
        text = _text(r.get("depth_cm"))
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            bad.append(i + 1)
            continue
        out[i] = value
    if bad:
        first = _text(records[bad[0] - 1].get("depth_cm"))
        raise DataError(
            f"{source}: depth_cm must be a positive number of centimetres (or empty: not "
            f"recorded); {row_list(bad)} (first: {first!r}). Rows count from 1 after the header"
        )
    return out


def row_list(rows: Sequence[int], limit: int = 10) -> str:
    """``row 3`` / ``rows 3, 5 and 2 more`` of row numbers (counting from 1 after the header)."""
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _labels(raw: list[str], source: str) -> tuple[np.ndarray, list[str]]:
    given = [v for v in raw if v != ""]
    try:
        values = [int(float(v)) if v != "" else -1 for v in raw]
        if all(float(v) == int(float(v)) for v in given):
            return np.array(values, dtype=np.int64), []
    except ValueError:
        pass
    classes = sorted(set(given))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] if v != "" else -1 for v in raw], dtype=np.int64), classes


def _expand_frames(manifest: Manifest) -> Manifest:
    """One row per frame for multi-frame DICOM files (reads headers only)."""
    dicom = [i for i, p in enumerate(manifest.paths) if p.lower().endswith(DICOM_EXTENSIONS)]
    if not dicom:
        return manifest
    counts = np.ones(len(manifest), dtype=np.int64)
    for i in dicom:
        try:
            with fsspec.open(manifest.paths[i], "rb", **manifest.storage_options) as f:
                counts[i] = count_frames(f, name=manifest.paths[i])
        except (DecodeError, OSError):
            counts[i] = 1  # unreadable: stays one row, reported as a bad file when loaded
    if (counts == 1).all():
        return manifest
    order = np.repeat(np.arange(len(manifest)), counts)
    expanded = manifest.select(order)
    # frame k of each repeated row; files with one frame keep -1 (the whole file).
    first = np.repeat(np.cumsum(counts) - counts, counts)
    expanded.frame = np.where(counts[order] > 1, np.arange(len(order)) - first, -1)
    return expanded
