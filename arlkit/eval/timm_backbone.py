"""timm ViTs behind the arlkit backbone contract, and loading local timm weights."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from arlkit.errors import ConfigError
from arlkit.taxonomy import Taxonomy

__all__ = ["TimmBackbone", "load_timm_weights"]


class TimmBackbone(nn.Module):
    """A timm ViT-like model behind the arlkit backbone contract.

    The organ condition is accepted and ignored (plain ViTs have none); inputs in [0, 1]
    are normalised with the model's ``pretrained_cfg`` mean/std averaged over channels,
    as its weights expect.

    Args:
        model: a timm model with ``patch_embed``, ``forward_features`` and
            ``forward_intermediates`` (timm's ``VisionTransformer`` family).
        taxonomy: reported as the backbone's taxonomy (for organ indices of the data).
    """

    def __init__(self, model: nn.Module, taxonomy: Taxonomy | None = None) -> None:
        super().__init__()
        for attr in ("patch_embed", "forward_intermediates", "num_prefix_tokens"):
            if not hasattr(model, attr):
                raise ConfigError(
                    f"timm model {type(model).__name__} has no {attr!r}: arlkit evaluates "
                    "ViT-like backbones (patch tokens + forward_intermediates); choose a vit_* model"
                )
        self.model = model
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.depth = len(getattr(model, "blocks", []))
        self.blocks = getattr(model, "blocks", nn.ModuleList())
        self.taxonomy = taxonomy or Taxonomy()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size", (1, 224, 224))
        self.img_size = int(getattr(model.patch_embed, "img_size", size[-2:])[0])
        mean = float(sum(cfg.get("mean", (0.0,))) / len(cfg.get("mean", (0.0,))))
        std = float(sum(cfg.get("std", (1.0,))) / len(cfg.get("std", (1.0,))))
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(
        self, x: torch.Tensor, organ: Any = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-normed tokens ``(B, prefix+N, C)`` of images ``(B, in_chans, H, W)``."""
        if mask is not None:
            raise ConfigError("timm backbones take no MIM mask in evaluation")
        return self.model.forward_features(self._norm(x))

    def forward(self, x: torch.Tensor, organ: Any = None) -> torch.Tensor:
        """Class token ``(B, C)``."""
        return self.forward_features(x)[:, 0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        organ: Any = None,
        indices: int | list[int] | None = 4,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """timm's ``forward_intermediates`` (the organ is ignored)."""
        return self.model.forward_intermediates(
            self._norm(x), indices=indices, norm=norm, stop_early=stop_early,
            output_fmt=output_fmt, intermediates_only=intermediates_only,
        )

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.model, "no_weight_decay", lambda: set())()
        return {f"model.{n}" for n in inner}


def load_timm_weights(model: nn.Module, path: str, spec: str) -> None:
    """Load a local checkpoint into ``model``: 3→1 input channels, resized position grid."""
    import fsspec
    from timm.models._manipulate import adapt_input_conv

    with fsspec.open(path, "rb") as handle:
        raw = handle.read()
    if path.endswith(".safetensors"):
        from safetensors.torch import load as st_load

        state = st_load(raw)
    else:
        import io

        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "module"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    first = (getattr(model, "pretrained_cfg", {}) or {}).get("first_conv")
    key = f"{first}.weight" if first else None
    if key and key in state and state[key].shape[1] != model.state_dict()[key].shape[1]:
        state[key] = adapt_input_conv(model.state_dict()[key].shape[1], state[key])
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # e.g. resamples ViT position embeddings
        state = filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = [k for k in unexpected if k.startswith(("head", "fc.", "classifier"))]
    if missing or len(unexpected) > len(head):
        raise ConfigError(
            f"--backbone {spec}: weights do not fit the model (missing {missing[:5]}, "
            f"unexpected {[k for k in unexpected if k not in head][:5]}); check the model name"
        )
