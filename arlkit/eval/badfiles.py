"""Unreadable images met during an evaluation: collected per split, reported, recorded.

A manifest row whose file is missing or does not decode becomes an invalid sample
(:class:`arlkit.data.dataset.ManifestDataset`); the evaluation batches leave it out
(:func:`arlkit.eval.features.collate_samples` lists it under ``"bad_files"``). Nothing is
dropped silently: :class:`BadFiles` collects the ``(path, reason)`` of every such file of
a split, :func:`warning_line` names a few of them on the output, and ``results.json``
records them all (:func:`bad_file_summary`). A split without any readable image is an
error naming the split, the count and the first file (:meth:`BadFiles.error`). The reasons
are those of the training run's ``bad_files.jsonl`` (:class:`arlkit.data.collate.BadFileLog`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from arlkit.errors import DataError

__all__ = ["BadFiles", "bad_file_summary", "warning_line"]

#: Files named in a warning line; results.json lists all of them.
SHOWN = 3


class BadFiles:
    """The unreadable files of one split, each once, in the order met.

    Args:
        split: ``train``, ``val`` or ``test`` (named in messages and records).
    """

    def __init__(self, split: str) -> None:
        self.split = split
        self._reasons: dict[str, str] = {}

    def add(self, batch: Mapping[str, Any]) -> None:
        """Record the ``bad_files`` ``[(path, reason)]`` of a collated batch."""
        self.extend(batch.get("bad_files", ()))

    def extend(self, files: Iterable[tuple[str, str]]) -> None:
        for path, reason in files:
            self._reasons.setdefault(str(path), str(reason))

    def __len__(self) -> int:
        return len(self._reasons)

    def files(self) -> list[tuple[str, str]]:
        """``[(path, reason)]`` in the order met."""
        return list(self._reasons.items())

    def records(self) -> list[dict[str, str]]:
        """``[{"split", "path", "reason"}]`` for ``results.json``."""
        return [{"split": self.split, "path": p, "reason": r} for p, r in self._reasons.items()]

    def error(self, what: str = "feature extraction") -> DataError:
        """The error of a split in which not one image could be read."""
        if not self._reasons:
            return DataError(f"{what}: the {self.split} split holds no images")
        path, reason = next(iter(self._reasons.items()))
        return DataError(
            f"{what}: the {self.split} split holds no readable images: all {len(self)} "
            f"could not be read; first: {path}: {reason}. Paths in a manifest are relative "
            "to the manifest's folder (or absolute): check that the files exist there and "
            "are images"
        )


def bad_file_summary(records: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """``{"count": N, "files": [{"split", "path", "reason"}, ...]}`` (each file once per split)."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for r in records:
        seen.setdefault((r["split"], r["path"]), dict(r))
    files = list(seen.values())
    return {"count": len(files), "files": files}


def warning_line(records: list[Mapping[str, str]], then: str) -> str:
    """One line naming up to :data:`SHOWN` unreadable files, the count per split, and ``then``
    (where the full list is, what to do)."""
    per_split: dict[str, int] = {}
    for r in records:
        per_split[r["split"]] = per_split.get(r["split"], 0) + 1
    counts = ", ".join(f"{s}: {n}" for s, n in per_split.items())
    shown = "; ".join(f"{r['path']} ({r['reason']})" for r in records[:SHOWN])
    more = f"; and {len(records) - SHOWN} more" if len(records) > SHOWN else ""
    return f"{len(records)} unreadable image(s) left out ({counts}): {shown}{more}. {then}"
