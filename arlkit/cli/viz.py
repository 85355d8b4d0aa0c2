"""``arlkit viz ...`` commands: pictures that help judge a model.

``viz`` is a command group; each picture is a nested sub-command that registers itself in
:func:`register` (``offsets`` here; others add theirs the same way). Handlers take the
parsed namespace and return the exit code. matplotlib is an optional extra
(``pip install 'arlkit[viz]'``) and is imported only when a picture is drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "viz_offsets"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``viz`` command group and its sub-commands."""
    viz = sub.add_parser("viz", help="draw pictures of a model (offsets, PCA of features)")
    viz.set_defaults(handler=lambda args: (viz.print_help(), 2)[1])
    viz_sub = viz.add_subparsers(dest="viz_command", metavar="PICTURE")
    _register_offsets(viz_sub)
    from arlkit.cli.eval import add_viz_pca

    add_viz_pca(viz_sub)


def _register_offsets(viz_sub: argparse._SubParsersAction) -> None:
    p = viz_sub.add_parser(
        "offsets",
        help="sampling points of the deformable attention for two organs, side by side",
        description=(
            "Draw where the ACDT block samples keys/values around chosen token positions, "
            "for two organs side by side, so you can see the receptive field follow the "
            "anatomy. The model is an 'arlkit export' .safetensors file or a run directory "
            "(rebuilt from its own config), a torch checkpoint holding an A-ViT state dict (built from --size, "
            "--depth, --conditioner), or 'random' (a random model whose offset networks are "
            "perturbed so that the organ has a visible effect)."
        ),
    )
    p.add_argument("model", metavar="CHECKPOINT_OR_RANDOM")
    p.add_argument("--organ", default="cardiac", help="organ of the left panel")
    p.add_argument("--vs", default="breast", help="organ of the right panel (default: breast)")
    p.add_argument("--image", type=Path, help="PNG/JPEG/DICOM image (default: synthetic speckle)")
    p.add_argument("--out", type=Path, default=Path("offsets.png"), help="PNG to write")
    p.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    p.add_argument("--depth", type=int, default=None, help="override the size's depth")
    p.add_argument("--img-size", type=int, default=224, help="side the image is resized to")
    p.add_argument("--conditioner", default="onehot", help="conditioner the model was built with")
    p.add_argument("--block", type=int, default=-1, help="block whose offsets are drawn")
    p.add_argument("--points", type=int, default=3, help="positions per side (an N×N grid)")
    p.add_argument("--group", type=int, default=None, help="draw one offset group (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=viz_offsets)


def _load_image(path: Path | None, side: int) -> Any:
    import numpy as np
    import torch
    import torch.nn.functional as F

    if path is None:  # speckle-like: smoothed exponential noise
        gen = torch.Generator().manual_seed(0)
        img = torch.empty(1, 1, side, side).exponential_(generator=gen)
        img = F.avg_pool2d(img, 5, 1, 2)
    else:
        from arlkit.data.decode import decode_image
        from arlkit.errors import DataError

        if not path.is_file():
            raise DataError(f"viz offsets: --image {str(path)!r} is not an existing file")
        # DecodeError (a DataError) names the file when it is not a readable image
        arr = decode_image(path.read_bytes(), name=str(path))  # (H, W) in [0, 1]
        img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    img = F.interpolate(img, size=(side, side), mode="bilinear", antialias=True)
    return (img - img.min()) / (img.max() - img.min()).clamp_min(1e-6)


def _load_weights(model: Any, path: str) -> None:
    import torch

    from arlkit.errors import DataError

    if not Path(path).exists():
        raise DataError(f"viz offsets: {path!r} is neither 'random' nor an existing checkpoint")
    try:
        # weights_only: a checkpoint is data; never run code from a file someone handed over
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of a foreign file
        raise DataError(
            f"viz offsets: {path!r} is not a torch checkpoint of tensors ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass an 'arlkit export' "
            ".safetensors file, a run directory or 'random'"
        ) from None
    wanted = set(model.state_dict())
    candidates = [obj] + [
        obj[k]
        for k in ("model", "state_dict", "student", "teacher", "backbone")
        if isinstance(obj, dict) and isinstance(obj.get(k), dict)
    ]
    for state in candidates:
        for prefix in ("", "backbone.", "module.", "encoder.", "student.backbone.", "model."):
            sub = {
                k[len(prefix) :]: v
                for k, v in state.items()
                if isinstance(k, str) and k.startswith(prefix)
            }
            if sub and wanted <= set(sub) | {"mask_token"}:
                from arlkit.models.avit import checkpoint_filter_fn

                # position embeddings saved for another image size are resampled
                sub = checkpoint_filter_fn({k: v for k, v in sub.items() if k in wanted}, model)
                model.load_state_dict(sub, strict=False)
                return
    raise DataError(
        f"viz offsets: {path!r} holds no A-ViT state dict matching --size/--depth "
        f"(looked for keys like {sorted(wanted)[:3]} under model/state_dict/student/backbone)"
    )


def _build_model(args: argparse.Namespace) -> Any:
    """The A-ViT to draw: an ``arlkit export`` file, a run directory, a torch checkpoint, or
    ``random``."""
    import torch

    from arlkit.errors import DataError
    from arlkit.models.avit import AViT

    if args.model.endswith(".safetensors") or Path(args.model).is_dir():
        # an export or a run carries its own configuration
        from arlkit.eval.backbones import resolve_backbone

        model = resolve_backbone(args.model).model
        if not getattr(model, "deformable", False):
            raise DataError(f"viz offsets: {args.model!r} is not a deformable A-ViT; no offsets")
        return model
    model = AViT(
        size=args.size,
        depth=args.depth,
        img_size=args.img_size,
        conditioner=(args.conditioner, {}),
    ).eval()
    if args.model == "random":
        for blk in model.blocks:  # a zero last layer would give the regular grid for all organs
            torch.nn.init.normal_(blk.offset_net.proj.weight, std=0.3 / model.embed_dim**0.5)
            for p in blk.conditioner.parameters():
                torch.nn.init.normal_(p, std=1.0)
    else:
        _load_weights(model, args.model)
    return model


def viz_offsets(args: argparse.Namespace) -> int:
    """Handler of ``arlkit viz offsets``; writes the PNG and returns 0."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from arlkit.errors import ConfigError

        raise ConfigError("viz offsets needs matplotlib: pip install 'arlkit[viz]'") from None
    import torch

    torch.manual_seed(args.seed)
    model = _build_model(args)
    organs = [model.taxonomy.index(args.organ, "--organ"), model.taxonomy.index(args.vs, "--vs")]
    image = _load_image(args.image, args.img_size)
    from arlkit.errors import ConfigError

    depth = len(model.blocks)
    if not -depth <= args.block < depth:
        raise ConfigError(
            f"viz offsets: --block {args.block} is out of range; the model has "
            f"{depth} blocks (0..{depth - 1}, or -1 for the last)"
        )
    if args.points < 1:
        raise ConfigError(f"viz offsets: --points must be at least 1, got {args.points}")
    blk = model.blocks[args.block]
    captured: list[torch.Tensor] = []
    handle = blk.offset_net.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model.forward_features(image.expand(2, -1, -1, -1), organ=torch.tensor(organs))
    handle.remove()
    offsets = captured[0]  # (2, 2·G·K, H, W)
    groups = offsets.shape[1] // (2 * blk.kernel_size**2)
    if args.group is not None and not 0 <= args.group < groups:
        raise ConfigError(
            f"viz offsets: --group {args.group} is out of range; block "
            f"{args.block} has {groups} offset group(s) (0..{groups - 1})"
        )
    _draw(plt, image[0, 0], offsets, blk.kernel_size, model.patch_size, args, organs, model)
    print(f"wrote {args.out}")
    return 0


def _draw(
    plt: Any,
    image: Any,
    offsets: Any,
    ks: int,
    patch: int,
    args: Any,
    organs: list[int],
    model: Any,
) -> None:
    import torch

    b, _, gh, gw = offsets.shape
    k = ks * ks
    off = offsets.view(b, -1, k, 2, gh, gw)  # (2, G, K, 2, H, W)
    rows = torch.linspace(1, gh - 2, args.points).round().long().tolist()
    cols = torch.linspace(1, gw - 2, args.points).round().long().tolist()
    kk = torch.arange(k)
    base_y = (kk // ks - (ks - 1) / 2).float()
    base_x = (kk % ks - (ks - 1) / 2).float()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    colours = plt.get_cmap("tab10")
    for panel, ax in enumerate(axes):
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        for r in rows:
            for c in cols:
                groups = range(off.shape[1]) if args.group is None else [args.group]
                for g in groups:
                    # token coordinates -> pixel centres of the patches
                    py = (r + base_y + off[panel, g, :, 0, r, c]) * patch + patch / 2
                    px = (c + base_x + off[panel, g, :, 1, r, c]) * patch + patch / 2
                    ax.scatter(px, py, s=8, color=colours(g % 10), alpha=0.8)
                ax.plot(c * patch + patch / 2, r * patch + patch / 2, "w+", ms=10, mew=2)
        ax.set_xlim(0, gw * patch)
        ax.set_ylim(gh * patch, 0)
        ax.set_title(f"organ: {model.taxonomy.name(organs[panel])}")
        ax.set_axis_off()
    fig.suptitle(f"ACDT sampling points, block {args.block} (colour = offset group)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
