"""A conditioner that adds probe type and imaging depth to the organ context vector."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from arlkit.data.manifest import PROBES
from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["PROBE_TYPES", "ProbeConditioner"]

#: the probe types of arlkit's data, in the index order of its batches' ``probe`` entry
#: (:mod:`arlkit.data.condition`); the index after the last means "not recorded"
PROBE_TYPES: tuple[str, ...] = tuple(p for p in PROBES if p != "unknown")


class ProbeConditioner(nn.Module):
    """Organ one-hot + probe type + imaging depth → anatomical context vector ``(B, dim)``.

    ``AC = W_o·onehot(organ) + E[probe] + W_d·fourier(depth / max_depth)``; unknown organ
    gives a zero one-hot, unknown probe its own learned row, unknown depth (NaN) zero features.

    In training and evaluation arlkit feeds every image's ``probe`` and ``depth_cm``
    (``condition_keys``): the manifest's ``probe`` and ``depth_cm`` columns, or the synthetic
    corpus's probe (it has no physical depth: NaN, not recorded). Called directly, pass them
    through the backbone: ``backbone.forward_features(x, {"organ": ..., "probe": ...,
    "depth_cm": ...})``.

    Args:
        dim: model width C (injected).
        taxonomy: organ classes (injected).
        probes: probe type names, in the index order of the ``probe`` entry; keep the
            default when arlkit's batches feed it.
        max_depth_cm: depth that maps to 1.0 before the Fourier features.
        depth_frequencies: number of sin/cos frequency pairs for the depth.
    """

    condition_keys: ClassVar[tuple[str, ...]] = ("probe", "depth_cm")

    def __init__(
        self,
        dim: int,
        taxonomy: Taxonomy,
        probes: tuple[str, ...] = PROBE_TYPES,
        max_depth_cm: float = 30.0,
        depth_frequencies: int = 4,
    ) -> None:
        super().__init__()
        if max_depth_cm <= 0:
            raise ConfigError(f"probe conditioner: max_depth_cm must be > 0, got {max_depth_cm}")
        if len(set(probes)) != len(probes) or not probes:
            raise ConfigError(f"probe conditioner: probe names must be unique, got {probes}")
        self.taxonomy = taxonomy
        self.probes = tuple(probes)
        self.max_depth_cm = max_depth_cm
        self.organ_proj = nn.Linear(taxonomy.num_classes, dim)
        self.probe_embed = nn.Embedding(len(self.probes) + 1, dim)  # last row: not recorded
        self.depth_proj = nn.Linear(2 * depth_frequencies, dim, bias=False)
        freqs = math.pi * 2.0 ** torch.arange(depth_frequencies, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        nn.init.zeros_(self.probe_embed.weight)
        nn.init.zeros_(self.depth_proj.weight)

    def forward(self, condition: Tensor | Mapping[str, Tensor] | None, batch_size: int) -> Tensor:
        """Context vectors.

        Args:
            condition: organ indices ``(B,)`` (``num_classes`` = unknown), organ
                probabilities ``(B, K)``/``(B, K+1)``, None, or a mapping with keys
                ``organ``, ``probe`` (LongTensor ``(B,)``) and ``depth_cm`` (``(B,)``).
            batch_size: B, used when nothing is known.

        Returns:
            ``(B, dim)``.
        """
        organ = condition.get("organ") if isinstance(condition, Mapping) else condition
        probe = condition.get("probe") if isinstance(condition, Mapping) else None
        depth = condition.get("depth_cm") if isinstance(condition, Mapping) else None
        weight = self.organ_proj.weight
        out = self.organ_proj(self._organ_onehot(organ, batch_size, weight))
        unknown_probe = len(self.probes)
        if probe is None:
            probe = torch.full((batch_size,), unknown_probe, dtype=torch.long, device=weight.device)
        if probe.min() < 0 or probe.max() > unknown_probe:
            raise ConfigError(
                f"probe index outside 0..{unknown_probe} (probes: {', '.join(self.probes)}, "
                f"{unknown_probe} = not recorded)"
            )
        out = out + self.probe_embed(probe.to(weight.device))
        if depth is not None:
            scaled = depth.to(device=weight.device, dtype=torch.float32) / self.max_depth_cm
            angles = scaled[:, None] * self.freqs  # (B, F)
            feats = torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, 2F)
            feats = torch.nan_to_num(feats, nan=0.0)
            out = out + self.depth_proj(feats.to(weight.dtype))
        return out

    def _organ_onehot(self, organ: Tensor | None, batch_size: int, like: Tensor) -> Tensor:
        k = self.taxonomy.num_classes
        if organ is None:
            return like.new_zeros(batch_size, k)
        if organ.is_floating_point():
            if organ.shape[-1] not in (k, k + 1):
                raise ConfigError(f"organ probabilities must have {k} or {k + 1} columns")
            return organ[:, :k].to(like)
        if organ.min() < 0 or organ.max() > k:
            raise ConfigError(f"organ index outside 0..{k} ({k} = unknown)")
        onehot = torch.nn.functional.one_hot(organ.long(), k + 1)[:, :k]  # unknown → zeros
        return onehot.to(like)
