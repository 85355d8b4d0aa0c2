"""timm registrations: ``timm.create_model("avit_base_patch16_224")`` after ``import arlkit``.

No weights ship with arlkit and nothing is downloaded: ``pretrained=True`` needs a local
file, ``pretrained_cfg_overlay=dict(file="backbone.safetensors")`` (an ``arlkit export``
file; its tensor names are the model's own). Extra keyword
arguments go to :class:`~arlkit.models.avit.AViT` (``deformable=False``, ``in_chans=3``,
``num_classes=10``, ``conditioner=("soft_embedding", {})``, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from arlkit.errors import ConfigError
from arlkit.models.avit import AViT, checkpoint_filter_fn

__all__ = ["avit_base_patch16_224", "avit_small_patch16_224", "avit_tiny_patch16_224"]


def _cfg() -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (1, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (0.5,),
        "std": (0.5,),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }


default_cfgs = generate_default_cfgs(
    {f"avit_{s}_patch16_224": _cfg() for s in ("tiny", "small", "base")}
)


def _create(size: str, pretrained: bool, /, **kwargs: Any) -> AViT:
    if kwargs.pop("features_only", False):
        raise ConfigError(
            f"avit_{size}_patch16_224: features_only is not supported; call "
            "model.forward_intermediates(x, organ, indices=...) for multi-level features"
        )
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not (overlay.get("file") or overlay.get("state_dict")):
        # timm would fall back to random weights with only a log line: refuse instead
        raise ConfigError(
            f"avit_{size}_patch16_224: arlkit ships no pretrained weights and downloads none; "
            "pass pretrained_cfg_overlay=dict(file='backbone.safetensors') with a file written "
            "by 'arlkit export', or pretrained=False"
        )
    asked = kwargs.pop("size", size)  # an export's architecture arguments carry it
    if asked != size:
        raise ConfigError(
            f"avit_{size}_patch16_224: size={asked!r} contradicts the model name; create "
            f"'avit_{asked}_patch16_224' instead"
        )
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    model = build_model_with_cfg(
        AViT,
        f"avit_{size}_patch16_224",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # position embeddings of other sizes
        size=size,
        **kwargs,
    )
    model.pretrained_cfg = model.default_cfg = dict(
        model.pretrained_cfg, input_size=(model.in_chans, 224, 224)
    )
    if device is not None or dtype is not None:
        model.to(device=torch.device(device) if device else None, dtype=dtype)
    return model


@register_model
def avit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> AViT:
    """A-ViT-Ti/16 (192 wide, 12 deep, 3 heads), 1 input channel."""
    return _create("tiny", pretrained, **kwargs)


@register_model
def avit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> AViT:
    """A-ViT-S/16 (384 wide, 12 deep, 6 heads), 1 input channel."""
    return _create("small", pretrained, **kwargs)


@register_model
def avit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> AViT:
    """A-ViT-B/16 (768 wide, 12 deep, 12 heads), 1 input channel; ViT-B/16 with ACDT blocks."""
    return _create("base", pretrained, **kwargs)
