"""Toy-size overrides shared by the engine and evaluation tests: a recipe trains in seconds."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"

#: Shrinks any recipe to a toy: a 2-block, 32-wide A-ViT on 32 px views, 4 images per step.
TOY = [
    "model.backbone.params.size=tiny",
    "model.backbone.params.embed_dim=32",
    "model.backbone.params.depth=2",
    "model.backbone.params.num_heads=2",
    "model.backbone.params.patch_size=8",
    "model.backbone.params.img_size=32",
    "data.dataset.params.size=48",
    "data.dataset.params.length=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.precision=fp32",
    "train.log_every=1",
    "train.device=cpu",
]


def toy_overrides(tmp_path: pathlib.Path, recipe: str, steps: int = 2, **extra: object) -> list[str]:
    """Overrides that shrink ``recipe`` (a file name under recipes/) to toy size."""
    text = (RECIPES / recipe).read_text()
    out = list(TOY)
    if "name: multicrop" in text:
        out += ["data.views.params.global_size=32", "data.views.params.local_size=16",
                "data.views.params.n_local=2"]
    else:
        out += ["data.views.params.size=32"]
    if "self_distillation" in text:
        out += [
            "objectives.self_distillation.params.out_dim=64",
            "objectives.self_distillation.params.hidden_dim=32",
            "objectives.self_distillation.params.bottleneck_dim=16",
        ]
    if "patch_distillation" in text:
        out += [
            "objectives.patch_distillation.params.out_dim=48",
            "objectives.patch_distillation.params.hidden_dim=32",
            "objectives.patch_distillation.params.bottleneck_dim=16",
        ]
    if "decoder_depth" in text:
        out += ["objectives.mim.params.decoder_dim=32", "objectives.mim.params.decoder_heads=2",
                "objectives.mim.params.decoder_depth=1"]
    out += [f"train.steps={steps}", f"run_dir={tmp_path / 'run'}"]
    out += [f"{k}={v}" for k, v in extra.items()]
    return out


def partly_unreadable_dataset(tmp_path: pathlib.Path, repeats: int) -> str:
    """A ``data.dataset`` override: a manifest of ``good, good, good, junk`` × ``repeats``
    (a readable 48 px PNG and a file that is not an image), bad files tolerated."""
    import numpy as np
    from PIL import Image

    (tmp_path / "junk.png").write_text("not an image")
    pixels = (np.random.default_rng(0).random((48, 48)) * 255).astype("uint8")
    Image.fromarray(pixels).save(tmp_path / "good.png")
    rows = "".join(f"{name}.png,liver\n" for name in ("good", "good", "good", "junk") * repeats)
    (tmp_path / "m.csv").write_text("path,organ\n" + rows)
    return (f"data.dataset={{name: manifest, params: {{path: {tmp_path / 'm.csv'}, size: 48, "
            "max_bad_fraction: 1.0}}")
