"""Per-image side information for conditioners that read more than the organ.

A conditioner that reads e.g. the transducer type names it in ``condition_keys`` (see
:mod:`arlkit.conditioners.base`); the batches of training and evaluation carry every key of
:data:`CONDITION_KEYS`, and :func:`batch_condition` turns a batch into what the backbone takes:
the organ indices alone, or the mapping ``{"organ": ..., "probe": ...}`` when the backbone's
conditioners read side information.

``probe`` is a LongTensor ``(B,)`` of indices into :data:`arlkit.data.manifest.PROBES`
(``linear``, ``convex``, ``phased``; the last index, ``unknown``, means not recorded), taken
from the samples' ``probe`` entry (the manifest's ``probe`` column, the synthetic corpus's
probe); a sample without one counts as ``unknown``. ``depth_cm`` is a float32 tensor ``(B,)``
of imaging depths in centimetres (the manifest's ``depth_cm`` column), NaN where not
recorded (the synthetic corpus has no physical depth).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from arlkit.data.manifest import PROBES
from arlkit.errors import ConfigError, DataError

__all__ = [
    "CONDITION_KEYS",
    "batch_condition",
    "check_condition_keys",
    "condition_keys",
    "depths",
    "probe_indices",
    "side_information",
]

#: side information every training and evaluation batch carries
CONDITION_KEYS: tuple[str, ...] = ("probe", "depth_cm")
_UNKNOWN_PROBE = PROBES.index("unknown")


def probe_indices(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """``(B,)`` indices into :data:`~arlkit.data.manifest.PROBES` of the samples' probes.

    Raises:
        DataError: a probe name outside ``PROBES`` (names the sample).
    """
    out = []
    for s in samples:
        name = s.get("probe") or "unknown"
        if name not in PROBES:
            raise DataError(
                f"sample {s.get('id', '?')!r}: unknown probe {name!r} (probes: {', '.join(PROBES)})"
            )
        out.append(PROBES.index(name))
    return torch.tensor(out, dtype=torch.long)


def depths(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """``(B,)`` float32 imaging depths in cm of the samples (NaN: not recorded)."""
    return torch.tensor([float(s.get("depth_cm", float("nan"))) for s in samples],
                        dtype=torch.float32)


def side_information(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Every :data:`CONDITION_KEYS` entry of a batch of samples."""
    return {"probe": probe_indices(samples), "depth_cm": depths(samples)}


def condition_keys(model: Any) -> tuple[str, ...]:
    """The side information a backbone's conditioners read (its ``condition_keys``; a model
    that wraps a backbone as ``.backbone``, e.g. a classifier, answers for it); ``()`` for
    backbones that read the organ alone or know nothing of conditions."""
    keys = getattr(model, "condition_keys", None)
    if keys is None and hasattr(model, "backbone"):
        keys = getattr(model.backbone, "condition_keys", None)
    return tuple(keys or ())


def check_condition_keys(keys: Iterable[str], where: str) -> None:
    """Raise unless the data can give every key a backbone's conditioners read.

    Raises:
        ConfigError: names ``where`` (e.g. the recipe's conditioner), the keys the data
            lacks and the ones it has.
    """
    missing = [k for k in keys if k not in CONDITION_KEYS]
    if missing:
        raise ConfigError(
            f"{where}: the conditioner reads {', '.join(map(repr, missing))}, which the data "
            f"does not provide (it provides the organ and {', '.join(CONDITION_KEYS)}); use a "
            "conditioner that reads only these, or feed the backbone a condition mapping "
            "yourself (arlkit.conditioners.base)"
        )


def batch_condition(
    batch: Mapping[str, Any],
    keys: Sequence[str],
    device: torch.device | str | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What a backbone takes as ``organ`` for a batch: ``batch["organ"]``, or, when its
    conditioners read side information (``keys``), ``{"organ": ..., key: batch[key], ...}``.
    """
    organ = batch["organ"].to(device)
    if not keys:
        return organ
    return {"organ": organ, **{k: batch[k].to(device) for k in keys}}
