"""Organ recognition: a linear head on the backbone's ``unknown``-conditioned class token.

The head reads features computed *without* an organ label (``organ=None``), so it can
recognise the organ of images that come without one; its probabilities then condition
the backbone (see :mod:`arlkit.organ.auto`). Training keeps the backbone frozen: the
features are computed once and a softmax regression is fitted on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arlkit.errors import ArlkitError, DataError
from arlkit.eval.features import eval_mode
from arlkit.taxonomy import Taxonomy

__all__ = [
    "HEAD_FORMAT",
    "OrganClassifier",
    "head_from_run",
    "load_head",
    "organ_features",
    "readable",
    "save_head",
    "stack_samples",
    "train_organ_classifier",
]

HEAD_FORMAT = "arlkit-organ-head/1"


class OrganClassifier(nn.Module):
    """Linear organ classifier over ``K`` classes (``unknown`` is never predicted).

    Args:
        embed_dim: width ``C`` of the backbone features.
        taxonomy: organ classes; the head has ``taxonomy.num_classes`` outputs.
    """

    def __init__(self, embed_dim: int, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.fc = nn.Linear(embed_dim, taxonomy.num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class-token features ``(B, C)`` → logits ``(B, K)``."""
        return self.fc(self.norm(features))

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Class-token features ``(B, C)`` → probabilities ``(B, K)`` (rows sum to 1)."""
        return self(features).float().softmax(-1)


@torch.no_grad()
def organ_features(
    backbone: nn.Module, images: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Class-token features of ``images`` with no organ label (``unknown`` conditioning).

    Args:
        backbone: follows the backbone contract (``forward_features(x, organ)``).
        images: ``(N, in_chans, H, W)``.
        batch_size: images per forward pass.

    Returns:
        ``(N, C)`` float32 features (computed in eval mode, as for any frozen feature
        extractor; the backbone's own mode is restored).
    """
    with eval_mode(backbone):
        out = [backbone.forward_features(chunk, None)[:, 0].float()
               for chunk in images.split(batch_size)]
    return torch.cat(out) if out else images.new_zeros(0, backbone.embed_dim)


def readable(samples: list[dict[str, Any]], bad_files: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The readable samples; the ``(id, reason)`` of the others is appended to ``bad_files``."""
    bad_files.extend((str(s.get("id", "?")), str(s.get("error", "unreadable")))
                     for s in samples if not s.get("valid", True))
    return [s for s in samples if s.get("valid", True)]


def stack_samples(
    dataset: Any, indices: Sequence[int] | None = None, where: str = "data",
    bad_files: list[tuple[str, str]] | None = None, groups: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` and organ indices ``(N,)`` of a map-style dataset.

    Unreadable images (samples with ``valid`` False) are left out; their ``(id, reason)``
    are appended to ``bad_files`` when it is given. ``groups``, when given, receives the
    ``patient_id`` of each returned image (``""`` when none), for patient-grouped splits.

    Raises:
        DataError: the dataset (or the selection) is empty, or no image of it is readable.
    """
    rows = list(range(len(dataset))) if indices is None else list(indices)
    if not rows:
        raise DataError(f"{where}: no images (empty manifest or selection); add labelled rows")
    bad: list[tuple[str, str]] = []  # this selection's, for the error below
    samples = readable([dataset[int(i)] for i in rows], bad)
    if bad_files is not None:
        bad_files.extend(bad)
    if groups is not None:
        groups.extend(str(s.get("patient_id") or "") for s in samples)
    if not samples:
        raise DataError(f"{where}: none of its {len(bad)} images could be read "
                        f"(first: {bad[0][0]}: {bad[0][1]})")
    images = torch.stack([s["image"] for s in samples])  # (N, 1, H, W)
    organs = torch.tensor([int(s["organ"]) for s in samples], dtype=torch.long)
    return images, organs


def train_organ_classifier(
    backbone: nn.Module,
    images: torch.Tensor,
    organs: torch.Tensor,
    taxonomy: Taxonomy,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> OrganClassifier:
    """Fit an :class:`OrganClassifier` on a frozen backbone (full-batch softmax regression).

    Args:
        backbone: frozen backbone (not modified).
        images: ``(N, in_chans, H, W)`` labelled images.
        organs: ``(N,)`` organ indices; ``unknown`` rows are ignored.
        taxonomy: the backbone's taxonomy.
        steps: optimizer steps of Adam.
        lr: learning rate.
        weight_decay: L2 penalty of Adam.
        seed: initialisation seed.

    Returns:
        The trained head, in eval mode.

    Raises:
        DataError: no labelled rows, or fewer than two organs among them.
    """
    keep = organs != taxonomy.unknown_index
    if int(keep.sum()) == 0 or torch.unique(organs[keep]).numel() < 2:
        raise DataError(
            "organ train: need labelled images of at least two organs "
            f"(got organs {sorted({taxonomy.name(int(o)) for o in organs.tolist()})})"
        )
    feats = organ_features(backbone, images[keep])
    targets = organs[keep]
    torch.manual_seed(seed)
    head = OrganClassifier(feats.shape[1], taxonomy)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(head(feats), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def save_head(head: OrganClassifier, path: str, extra: dict[str, str] | None = None) -> str:
    """Write the head's weights and taxonomy to a safetensors file."""
    import fsspec
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"format": HEAD_FORMAT, "taxonomy": json.dumps(list(head.taxonomy.organs)),
            "embed_dim": str(head.fc.in_features), **(extra or {})}
    with fsspec.open(path, "wb") as handle:
        handle.write(st_save(tensors, metadata=meta))
    return path


def head_from_run(run_dir: str, taxonomy: Taxonomy, name: str = "organ_classifier") -> OrganClassifier:
    """The organ head trained during pretraining by the ``organ_classifier`` objective.

    Reads the latest complete checkpoint of ``run_dir``; the EMA teacher's copy is used when
    the run has a teacher (it matches the exported teacher backbone), else the student's.

    Args:
        run_dir: a run directory.
        taxonomy: the run's taxonomy (the backbone's ``taxonomy``).
        name: the objective's name in the recipe.

    Raises:
        ArlkitError: no checkpoint, or no organ head in it.
    """
    from arlkit.engine import checkpoint as ckpt

    path = ckpt.find_latest(run_dir)
    if path is None:
        raise ArlkitError(f"--head {run_dir}: the run has no complete checkpoint")
    tensors, _, _ = ckpt.read_checkpoint(path)
    for who in ("teacher", "student"):
        prefix = f"{who}.heads.{name}.classifier."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            if state["fc.weight"].shape[0] != taxonomy.num_classes:
                raise ArlkitError(
                    f"--head {run_dir}: the run's organ head has {state['fc.weight'].shape[0]} "
                    f"outputs, the backbone's taxonomy {taxonomy.num_classes} organs; retrain "
                    "one with 'arlkit organ train'"
                )
            head = OrganClassifier(state["fc.weight"].shape[1], taxonomy)
            head.load_state_dict(state, strict=True)
            return head.eval()
    raise ArlkitError(
        f"--head {run_dir}: the run did not train an organ head (no objective {name!r}); "
        "add it to the recipe's objectives or train one with 'arlkit organ train'"
    )


def load_head(path: str, taxonomy: Taxonomy | None = None) -> OrganClassifier:
    """Read a head written by :func:`save_head`, or (with ``taxonomy``) a run directory's.

    Raises:
        ArlkitError: missing file or not an organ head.
    """
    import os
    import struct

    if taxonomy is not None and os.path.isdir(path):
        return head_from_run(path, taxonomy)

    import fsspec
    from safetensors.torch import load as st_load

    try:
        with fsspec.open(path, "rb") as handle:
            raw = handle.read()
        (size,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8 : 8 + size]).get("__metadata__", {})
        tensors = st_load(raw)
    except FileNotFoundError:
        raise ArlkitError(f"--head {path}: no such file; train one with 'arlkit organ train'") from None
    except Exception as exc:  # any parse failure of a foreign file
        raise ArlkitError(f"--head {path}: not a safetensors file ({exc})") from None
    if meta.get("format") != HEAD_FORMAT:
        raise ArlkitError(f"--head {path}: not an organ head (format {meta.get('format')!r})")
    head = OrganClassifier(int(meta["embed_dim"]), Taxonomy(tuple(json.loads(meta["taxonomy"]))))
    head.load_state_dict(tensors, strict=True)
    return head.eval()
