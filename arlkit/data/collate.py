"""Batching sample dicts, and the ledger of unreadable files.

:func:`collate` stacks the valid samples of a batch and reports the invalid ones
(unreadable files) in ``batch["bad_files"]`` — it never fills the gap with another
sample, so a batch may be smaller than asked. :class:`BadFileLog` counts what the loop
has seen, appends every bad file to ``bad_files.jsonl`` in the run directory (through
fsspec), and stops the run with a :class:`~arlkit.errors.DataError` once too many fail.
"""

from __future__ import annotations

import json
import numbers
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import torch

from arlkit.errors import ConfigError, DataError

__all__ = ["BadFileLog", "collate"]

_DROP = ("valid", "error")


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch.

    Tensors (and numpy arrays) are stacked to ``(B, ...)``; ints and bools become
    ``(B,)`` int64/bool tensors, floats ``(B,)`` float32; strings and other values stay
    lists. Invalid samples (``valid`` False) are left out.

    Args:
        samples: sample dicts, e.g. from :class:`~arlkit.data.dataset.ManifestDataset`
            or a views transform.

    Returns:
        The batch, plus ``n`` (number of valid samples, ``B``) and ``bad_files``: a list
        of ``(id, reason)`` of the dropped samples. With no valid sample only these two
        keys are present.

    Raises:
        DataError: valid samples disagree on their keys or on a tensor's shape.
    """
    good = [s for s in samples if s.get("valid", True)]
    bad = [(str(s.get("id", "?")), str(s.get("error", "unreadable"))) for s in samples
           if not s.get("valid", True)]  # fmt: skip
    batch: dict[str, Any] = {"n": len(good), "bad_files": bad}
    if not good:
        return batch
    keys = [k for k in good[0] if k not in _DROP]
    for s in good[1:]:
        missing = set(keys) ^ {k for k in s if k not in _DROP}
        if missing:
            raise DataError(
                f"collate: sample {s.get('id', '?')!r} and {good[0].get('id', '?')!r} differ in "
                f"keys {sorted(missing)}; a dataset must return the same keys for every item"
            )
    for key in keys:
        batch[key] = _stack(key, [s[key] for s in good], good)
    return batch


def _stack(key: str, values: list[Any], samples: list[Mapping[str, Any]]) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray):
        values = [torch.from_numpy(np.asarray(v)) for v in values]
        first = values[0]
    if isinstance(first, torch.Tensor):
        for v, s in zip(values, samples):
            if v.shape != first.shape:
                raise DataError(
                    f"collate: {key!r} of sample {s.get('id', '?')!r} has shape "
                    f"{tuple(v.shape)}, the batch's first has {tuple(first.shape)}; give the "
                    f"dataset and views one output size"
                )
        return torch.stack(values)
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    return list(values)


class BadFileLog:
    """Counts samples and unreadable files; lists the bad ones; stops when there are too many.

    The run stops when more than ``max_fraction`` of the samples seen so far were bad —
    measured against at least ``min_samples``, so that a few bad files among the first
    samples do not stop a run while a dataset of broken paths stops after
    ``max_fraction · min_samples`` of them.

    Args:
        max_fraction: tolerated fraction of bad files (0 = stop at the first one).
        run_dir: folder (local path or fsspec URL) for the list; None keeps it in memory.
        min_samples: the smallest denominator of the fraction.
        filename: name of the list in ``run_dir`` (one JSON object per line:
            ``{"path": ..., "reason": ...}``).
        storage_options: fsspec options for ``run_dir``.

    Raises:
        ConfigError: ``max_fraction`` outside [0, 1] or ``min_samples`` < 1.
    """

    def __init__(
        self,
        max_fraction: float = 0.01,
        run_dir: str | None = None,
        *,
        min_samples: int = 1000,
        filename: str = "bad_files.jsonl",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {max_fraction}")
        if min_samples < 1:
            raise ConfigError(f"BadFileLog: min_samples must be ≥ 1, got {min_samples}")
        self.max_fraction, self.min_samples = float(max_fraction), int(min_samples)
        self.seen = 0
        self.bad: list[tuple[str, str]] = []
        self.path = None if run_dir is None else posixpath.join(run_dir.rstrip("/"), filename)
        self._options = dict(storage_options or {})
        self._append_ok = True
        self._written = 0

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def fraction(self) -> float:
        """Bad files over samples seen (0 before any)."""
        return len(self.bad) / self.seen if self.seen else 0.0

    def record(self, n_valid: int, bad_files: Sequence[tuple[str, str]]) -> None:
        """Account for one batch: ``n_valid`` good samples and the dropped ``(path, reason)``.

        Raises:
            DataError: the bad fraction exceeds the limit (the message names the list).
        """
        self.seen += int(n_valid) + len(bad_files)
        if not bad_files:
            return
        self.bad.extend((str(p), str(r)) for p, r in bad_files)
        self._write()
        self.check()

    def check(self) -> None:
        """Raise if too many files were bad (see the class docstring)."""
        allowed = self.max_fraction * max(self.seen, self.min_samples)
        if len(self.bad) > allowed or (self.max_fraction == 0.0 and self.bad):
            where = f"; all of them are listed in {self.path}" if self.path else ""
            path, reason = self.bad[0]
            raise DataError(
                f"{len(self.bad)} of {self.seen} samples ({self.fraction:.2%}) could not be read, "
                f"more than the dataset's max_bad_fraction={self.max_fraction:.2%}{where}. "
                f"First: {path}: {reason}. Fix or remove these files, or raise max_bad_fraction"
            )

    def state_dict(self) -> dict[str, Any]:
        """Counts to resume with (the list itself is in the file)."""
        return {"seen": self.seen, "bad": [list(b) for b in self.bad]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.bad = [(str(p), str(r)) for p, r in state["bad"]]
        self._written = len(self.bad)  # already in the file from the earlier run

    def _write(self) -> None:
        if self.path is None:
            return
        fs, path = fsspec.core.url_to_fs(self.path, **self._options)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self._append_ok:
            lines = "".join(_line(p, r) for p, r in self.bad[self._written :])
            try:
                with fs.open(path, "a", encoding="utf-8") as f:
                    f.write(lines)
                self._written = len(self.bad)
                return
            except (NotImplementedError, ValueError, OSError):
                self._append_ok = False  # object stores: rewrite the whole (short) list
        with fs.open(path, "w", encoding="utf-8") as f:
            f.write("".join(_line(p, r) for p, r in self.bad))
        self._written = len(self.bad)


def _line(path: str, reason: str) -> str:
    return json.dumps({"path": path, "reason": reason}, ensure_ascii=False) + "\n"
