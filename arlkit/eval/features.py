"""Frozen-backbone features: computed once per (backbone, data, settings) and cached.

A linear probe, a kNN classifier and every label fraction of them read the same
features, so each split is encoded once per command; a cache directory keeps them across
commands (``arlkit eval compare`` re-uses the linear probe's features for kNN). The cache
key holds a fingerprint of the backbone's weights and of the buffers its state dict leaves
out (a timm backbone's input normalisation), the data and every setting that changes the
features. The data part names the dataset (a manifest by its size and modification time) and
the chosen rows, not every image's bytes: after rewriting images in place behind an unchanged
manifest, clear the cache directory (or pass another ``--cache-dir``).

Pooling: ``cls`` (class token), ``avg`` (mean of the patch tokens, MAE's fine-tuning default) or
``cls+avg`` (both, concatenated, as DINO's linear evaluation of ViT-B). With
``n_last_blocks = n > 1`` the features come from the outputs of the last ``n`` blocks, each
through the backbone's final norm, as in DINO's ``eval_linear.py`` (``n_last_blocks=4``
for ViT-S): ``cls`` concatenates their class tokens, ``cls+avg`` adds the mean patch token
of the last block, ``avg`` concatenates the mean patch tokens of the ``n`` blocks. The organ
of every sample is passed to the backbone unless ``use_organ`` is False (the unconditioned
view).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from arlkit.data.condition import batch_condition, condition_keys, side_information
from arlkit.errors import ConfigError, closest
from arlkit.eval.badfiles import BadFiles

__all__ = [
    "POOLS",
    "FeatureSet",
    "cached_features",
    "collate_samples",
    "eval_mode",
    "extract_features",
    "pool_blocks",
    "pool_tokens",
    "resolve_device",
]

POOLS: tuple[str, ...] = ("cls", "avg", "cls+avg")


@dataclass
class FeatureSet:
    """Features of one split.

    Attributes:
        features: ``(N, D)`` float32.
        labels: ``(N,)`` int64 class labels (-1 where none).
        organs: ``(N,)`` int64 taxonomy indices.
        bad_files: ``[(path, reason)]`` of the samples left out (unreadable files).
    """

    features: torch.Tensor
    labels: torch.Tensor
    organs: torch.Tensor
    bad_files: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, indices: Any) -> FeatureSet:
        """The rows ``indices`` (a sequence or array of ints)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return FeatureSet(self.features[idx], self.labels[idx], self.organs[idx])


def resolve_device(choice: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise ``torch.device(choice)``.

    Raises:
        ConfigError: not a device name, or a CUDA device this machine does not have.
    """
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        hint = "cuda" if choice.lower().startswith("gpu") else closest(choice, ("auto", "cpu", "cuda"))
        raise ConfigError(
            f"--device {choice!r} is not a device" + (f"; did you mean {hint!r}?" if hint else "")
            + " (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {choice}: CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {choice}: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            )
    return device


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack sample dicts into a batch; samples marked ``valid: False`` (bad files) are dropped.

    Returns:
        ``{"image": (B, 1, H, W), "organ": (B,), "probe": (B,), "depth_cm": (B,),
        "label": (B,)}`` (``probe``, ``depth_cm``: see :mod:`arlkit.data.condition`) plus ``"mask": (B, H, W)``
        when the samples have masks, ``"dropped": int`` and ``"bad_files"``: ``[(id, reason)]``
        of the samples left out.
    """
    good = [s for s in samples if s.get("valid", True)]
    batch: dict[str, Any] = {
        "dropped": len(samples) - len(good),
        "bad_files": [(str(s.get("id", "?")), str(s.get("error", "unreadable")))
                      for s in samples if not s.get("valid", True)],
    }
    if not good:
        return batch
    batch["image"] = torch.stack([s["image"] for s in good]).float()
    batch["organ"] = torch.tensor([int(s["organ"]) for s in good], dtype=torch.long)
    batch.update(side_information(good))  # probe, depth_cm
    batch["label"] = torch.tensor([int(s.get("label", -1)) for s in good], dtype=torch.long)
    if all("mask" in s for s in good):
        batch["mask"] = torch.stack([torch.as_tensor(s["mask"]).long() for s in good])
    return batch


def pool_tokens(tokens: torch.Tensor, num_prefix_tokens: int, pool: str) -> torch.Tensor:
    """Pool tokens ``(B, prefix+N, C)`` → ``(B, C)`` (``cls``/``avg``) or ``(B, 2C)`` (``cls+avg``)."""
    if pool not in POOLS:
        raise ConfigError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")
    cls = tokens[:, 0]
    avg = tokens[:, num_prefix_tokens:].mean(1)
    return {"cls": cls, "avg": avg, "cls+avg": torch.cat([cls, avg], -1)}[pool]


def pool_blocks(blocks: list[torch.Tensor], num_prefix_tokens: int, pool: str) -> torch.Tensor:
    """Pool the normed token outputs ``(B, prefix+N, C)`` of the last ``n`` blocks (DINO).

    ``cls``: the ``n`` class tokens concatenated ``(B, nC)``; ``avg``: the ``n`` mean patch
    tokens ``(B, nC)``; ``cls+avg``: the ``n`` class tokens and the mean patch token of the
    last block ``(B, (n+1)C)``, as DINO's ``eval_linear.py`` with ``--avgpool_patchtokens``.
    One block gives :func:`pool_tokens`.
    """
    if pool not in POOLS:
        raise ConfigError(f"--pool {pool!r}: choose one of {', '.join(POOLS)}")
    if not blocks:
        raise ConfigError("pool_blocks: give at least one block output")
    if len(blocks) == 1:
        return pool_tokens(blocks[0], num_prefix_tokens, pool)
    cls = [t[:, 0] for t in blocks]
    if pool == "cls":
        return torch.cat(cls, -1)
    if pool == "avg":
        return torch.cat([t[:, num_prefix_tokens:].mean(1) for t in blocks], -1)
    return torch.cat([*cls, blocks[-1][:, num_prefix_tokens:].mean(1)], -1)


def _blocks_and_norm(backbone: nn.Module) -> tuple[Any, nn.Module]:
    """The transformer blocks and final norm of an arlkit or (wrapped) timm ViT."""
    owners = [o for o in (backbone, getattr(backbone, "model", None))
              if isinstance(getattr(o, "blocks", None), (nn.ModuleList, nn.Sequential))
              and len(o.blocks)]
    for owner in owners:  # the module that holds the blocks and the final norm (timm: .model)
        if isinstance(getattr(owner, "norm", None), nn.Module):
            return owner.blocks, owner.norm
    if owners:
        return owners[0].blocks, nn.Identity()
    raise ConfigError(
        f"n_last_blocks: {type(backbone).__name__} exposes no transformer blocks "
        "(.blocks); use n_last_blocks=1"
    )


def _last_block_tokens(backbone: nn.Module, images: torch.Tensor, organ: Any, n: int) -> list[torch.Tensor]:
    """Normed outputs ``(B, prefix+N, C)`` of the last ``n`` blocks, in block order."""
    blocks, norm = _blocks_and_norm(backbone)
    if not 1 <= n <= len(blocks):
        raise ConfigError(
            f"n_last_blocks={n}: the backbone has {len(blocks)} blocks; choose 1..{len(blocks)}"
        )
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [blk.register_forward_hook(keep) for blk in list(blocks)[-n:]]
    try:
        backbone.forward_features(images, organ)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != n:
        raise ConfigError(
            f"n_last_blocks={n}: the backbone's forward ran {len(captured)} of its last {n} blocks"
        )
    return [norm(t) for t in captured]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no drop path, dropout or conditioning dropout), then
    restore its own mode: features must not depend on train-time noise."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Any,
    *,
    pool: str = "cls+avg",
    use_organ: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    n_last_blocks: int = 1,
    split: str = "data",
) -> FeatureSet:
    """Encode every sample of ``dataset`` with the frozen ``backbone``.

    Args:
        backbone: follows the backbone contract (``forward_features(x, organ)``).
        dataset: map-style dataset of sample dicts.
        pool: ``cls``, ``avg`` or ``cls+avg``.
        use_organ: pass each sample's organ index, with the side information the
            backbone's conditioners read (``condition_keys``; else ``None``: unknown).
        batch_size: images per forward pass.
        device: where the backbone runs.
        num_workers: DataLoader workers.
        n_last_blocks: pool the outputs of the last ``n`` blocks (see :func:`pool_blocks`);
            1 pools the final tokens.
        split: name of the split in messages (``train``, ``val``, ``test``).

    Returns:
        The :class:`FeatureSet` on CPU (bad files left out, listed in ``bad_files``).

    Raises:
        ConfigError: bad ``pool`` or ``n_last_blocks``.
        DataError: no readable image (names the split, the count and the first file).
    """
    if n_last_blocks < 1:
        raise ConfigError(f"n_last_blocks must be >= 1, got {n_last_blocks}")
    device = torch.device(device)
    backbone.to(device)
    with eval_mode(backbone):  # features of the model as it will be used
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_samples)
        feats, labels, organs = [], [], []
        prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        keys = condition_keys(backbone)
        bad = BadFiles(split)
        for batch in loader:
            bad.add(batch)
            if "image" not in batch:
                continue
            organ = batch_condition(batch, keys, device) if use_organ else None
            images = batch["image"].to(device)
            if n_last_blocks == 1:
                tokens = backbone.forward_features(images, organ)  # (B, 1+N, C)
                feats.append(pool_tokens(tokens, prefix, pool).float().cpu())
            else:
                outs = _last_block_tokens(backbone, images, organ, n_last_blocks)
                feats.append(pool_blocks(outs, prefix, pool).float().cpu())
            labels.append(batch["label"])
            organs.append(batch["organ"])
    if not feats:
        raise bad.error()
    return FeatureSet(torch.cat(feats), torch.cat(labels), torch.cat(organs), bad.files())


def _read_cached(path: str, expected: int) -> FeatureSet | None:
    """A cache entry, or None when it cannot say which samples it left out (entries written
    before ``bad_files`` was recorded, with fewer rows than the split): those are recomputed."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as handle:
        meta = handle.metadata() or {}
    t = load_file(path)
    bad = [(str(p), str(r)) for p, r in json.loads(meta.get("bad_files", "[]"))]
    if t["features"].shape[0] + len(bad) != expected:
        return None
    return FeatureSet(t["features"], t["labels"], t["organs"], bad)


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_features(
    backbone: nn.Module,
    dataset: Any,
    key: dict[str, Any],
    cache_dir: str | None,
    **kwargs: Any,
) -> tuple[FeatureSet, bool]:
    """:func:`extract_features`, read from or written to ``cache_dir`` under ``key``.

    Args:
        backbone: the frozen backbone.
        dataset: the split to encode.
        key: everything that determines the features (backbone fingerprint and unsaved
            buffers, data, split, image size, pooling, blocks, organ use); JSON-serialisable.
        cache_dir: a local directory, or None for no disk cache.
        **kwargs: passed to :func:`extract_features` (``pool``, ``n_last_blocks`` and
            ``use_organ`` belong in ``key`` too).

    Returns:
        ``(features, hit)`` where ``hit`` says whether they came from the cache.
    """
    from safetensors.torch import save_file

    path = os.path.join(cache_dir, f"features-{_key_hash(key)}.safetensors") if cache_dir else None
    if path and os.path.exists(path):
        hit = _read_cached(path, len(dataset))
        if hit is not None:
            return hit, True
    out = extract_features(backbone, dataset, **kwargs)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({"features": out.features.contiguous(), "labels": out.labels.contiguous(),
                   "organs": out.organs.contiguous()}, tmp,
                  metadata={"key": json.dumps(key, sort_keys=True, default=str),
                            "bad_files": json.dumps(out.bad_files)})
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return out, False
