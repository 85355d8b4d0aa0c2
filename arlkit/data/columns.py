"""A string column for tables of millions of rows that DataLoader workers share."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["StringColumn"]


class StringColumn(Sequence):
    """Strings (or None) packed into one numpy buffer, indexed like a list.

    DataLoader workers forked from the main process share a numpy buffer as it is; a
    list of millions of ``str`` objects is copied into every worker page by page, because
    reading an object writes its reference count.
    """

    def __init__(self, values: Iterable[str | None]) -> None:
        items = list(values)
        encoded = [b"" if v is None else str(v).encode("utf-8") for v in items]
        self._ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
        self._data = np.frombuffer(b"".join(encoded), np.uint8)
        nones = np.fromiter((v is None for v in items), bool, len(items))
        self._none = nones if nones.any() else None

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} rows")
        i %= n
        if self._none is not None and self._none[i]:
            return None
        start = int(self._ends[i - 1]) if i else 0
        return self._data[start : int(self._ends[i])].tobytes().decode("utf-8")

    def take(self, indices: Sequence[int] | np.ndarray) -> StringColumn:
        """The column of the given rows, in that order."""
        return StringColumn(self[int(i)] for i in np.asarray(indices).tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self[:3])
        return f"StringColumn([{head}{', …' if len(self) > 3 else ''}], {len(self)} rows)"
