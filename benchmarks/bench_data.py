"""Images per second of arlkit's data pipelines, against torchvision's, in one process.

(a) The synthetic generator (``SyntheticUltrasound``), alone and followed by the
    ``multicrop`` views, through a DataLoader with 0 and 2 workers.
(b) Real files: a temporary folder of 512×512 grey PNGs (organ sub-folders) read by
    ``ManifestDataset`` (decode → luminance → field-of-view crop → letterbox) and
    ``MultiCropViews`` (2×224 + 8×96, ultrasound augmentation), against torchvision's
    ``ImageFolder`` with the standard DINO multi-crop transform (transforms v2
    RandomResizedCrop, flip, colour jitter, grayscale, solarize, normalize; DINO's PIL
    Gaussian blur; 2×224 + 8×96) on the same files.

Every configuration gets a warm-up pass; then the passes are interleaved (the order
rotates every round) and the table shows the median images/s over rounds, with the
ratio arlkit / torchvision for (b). DataLoader workers are persistent so a pass
measures throughput, not process start-up. The main process uses one thread.

    python benchmarks/bench_data.py [--images 64] [--repeats 5] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from arlkit.data import ManifestDataset, MultiCropViews, ViewDataset, decode_image
from arlkit.data.collate import collate
from arlkit.data.preprocess import preprocess as preprocess_image
from arlkit.taxonomy import Taxonomy

ORGANS = ("breast", "liver", "cardiac", "thyroid")


def dino_transform() -> Callable[[Image.Image], list[torch.Tensor]]:
    """DINO's ``DataAugmentationDINO`` (2 global + 8 local crops): torchvision v2 crops, flips,
    colour jitter, grayscale, solarize and normalisation, and DINO's PIL Gaussian blur."""
    from torchvision.transforms import InterpolationMode, v2

    flip_and_jitter = v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ])  # fmt: skip
    normalize = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip

    def blur(p: float) -> Callable[[Image.Image], Image.Image]:
        # DINO's own PIL blur (radius 0.1–2): v2.GaussianBlur(23) on PIL images goes through
        # tensors and costs ~90 ms per crop here, which would make a strawman baseline.
        def apply(img: Image.Image) -> Image.Image:
            if random.random() >= p:
                return img
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

        return apply

    bicubic = InterpolationMode.BICUBIC
    global1 = v2.Compose([v2.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic),
                          flip_and_jitter, blur(1.0), normalize])  # fmt: skip
    global2 = v2.Compose([v2.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic),
                          flip_and_jitter, blur(0.1), v2.RandomSolarize(128, p=0.2), normalize])  # fmt: skip
    local = v2.Compose([v2.RandomResizedCrop(96, scale=(0.05, 0.4), interpolation=bicubic),
                        flip_and_jitter, blur(0.5), normalize])  # fmt: skip

    def transform(img: Image.Image) -> list[torch.Tensor]:
        return [global1(img), global2(img)] + [local(img) for _ in range(8)]

    return transform


def make_pngs(root: Path, n: int, size: int) -> None:
    """``n`` ultrasound-like PNGs (synthetic sector/linear scans with a black surround)."""
    try:
        from arlkit.data.synthetic import SyntheticUltrasound

        corpus = SyntheticUltrasound(size=size, length=n, organs=list(ORGANS), seed=1)
        images = [(corpus[i]["image"][0].numpy(), ORGANS[i % len(ORGANS)]) for i in range(n)]
    except ImportError:  # the synthetic corpus is not installed: speckle fans
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        r, th = np.hypot(xx - size / 2, yy + 0.1 * size), np.arctan2(xx - size / 2, yy + 0.1 * size)
        fan = (r > 0.25 * size) & (r < 1.0 * size) & (np.abs(th) < 0.7)
        images = [(np.where(fan, rng.rayleigh(0.25, fan.shape).clip(0, 1), 0.0),
                   ORGANS[i % len(ORGANS)]) for i in range(n)]  # fmt: skip
    for i, (img, organ) in enumerate(images):
        (root / organ).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / organ / f"{i:04d}.png")


def loader(dataset: Any, workers: int, batch: int, collate_fn: Any = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                      collate_fn=collate_fn, persistent_workers=workers > 0,
                      prefetch_factor=2 if workers else None)  # fmt: skip


def images_per_second(dl: DataLoader, n: int) -> float:
    start = time.perf_counter()
    for _ in dl:
        pass
    return n / (time.perf_counter() - start)


def run(configs: dict[str, tuple[DataLoader, int]], repeats: int) -> dict[str, float]:
    """Median images/s per configuration: warm-up, then interleaved rotating rounds."""
    for dl, n in configs.values():
        images_per_second(dl, n)
    names = list(configs)
    results: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            dl, n = configs[k]
            results[k].append(images_per_second(dl, n))
    return {k: statistics.median(v) for k, v in results.items()}


def stage_times(root: Path, n: int) -> dict[str, float]:
    """Milliseconds per image of each stage of the arlkit file pipeline (one process)."""
    files = sorted(root.rglob("*.png"))[:n]
    views = MultiCropViews()
    t = {"read+decode": 0.0, "fov+crop+letterbox": 0.0, "multicrop views": 0.0}
    for k, f in enumerate(files):
        t0 = time.perf_counter()
        img = decode_image(f.read_bytes(), name=str(f))
        t1 = time.perf_counter()
        out = preprocess_image(img, 224)
        t2 = time.perf_counter()
        views({"image": out.image, "fov": out.fov, "organ": 0},
              generator=torch.Generator().manual_seed(k))  # fmt: skip
        t3 = time.perf_counter()
        t["read+decode"] += t1 - t0
        t["fov+crop+letterbox"] += t2 - t1
        t["multicrop views"] += t3 - t2
    return {k: 1e3 * v / len(files) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="PNG files / synthetic images")
    parser.add_argument("--size", type=int, default=512, help="side of the PNG files")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# bench_data: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.images} images, {args.repeats} rounds, batch {args.batch}")  # fmt: skip

    rows: list[tuple[str, int, float, str]] = []
    if not args.skip_synthetic:
        from arlkit.data.synthetic import SyntheticUltrasound

        synth = SyntheticUltrasound(size=224, length=args.images, seed=0)
        configs = {}
        for w in args.workers:
            configs[f"synthetic|{w}"] = (loader(synth, w, args.batch, collate), args.images)
            views = ViewDataset(synth, MultiCropViews(), seed=0)
            configs[f"synthetic+multicrop|{w}"] = (loader(views, w, args.batch, collate), args.images)
        for k, v in run(configs, args.repeats).items():
            name, w = k.split("|")
            rows.append((f"(a) {name}", int(w), v, ""))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pngs(root, args.images, args.size)
        from torchvision.datasets import ImageFolder

        ours = ViewDataset(ManifestDataset(str(root), Taxonomy(), size=224), MultiCropViews(), 0)
        theirs = ImageFolder(str(root), transform=dino_transform())
        configs = {}
        for w in args.workers:
            configs[f"arlkit|{w}"] = (loader(ours, w, args.batch, collate), args.images)
            configs[f"torchvision|{w}"] = (loader(theirs, w, args.batch), args.images)
        medians = run(configs, args.repeats)
        for w in args.workers:
            ratio = medians[f"arlkit|{w}"] / medians[f"torchvision|{w}"]
            rows.append(("(b) arlkit manifest+multicrop", w, medians[f"arlkit|{w}"], f"{ratio:.2f}"))
            rows.append(("(b) torchvision ImageFolder+DINO", w, medians[f"torchvision|{w}"], "1.00"))
        stages = stage_times(root, min(args.images, 32))

    print("\n| pipeline | workers | images/s (median) | ratio vs torchvision |")
    print("|---|---:|---:|---:|")
    for name, w, v, ratio in rows:
        print(f"| {name} | {w} | {v:.1f} | {ratio} |")
    print(f"\narlkit file pipeline, ms per {args.size}×{args.size} PNG (one process, 1 thread):")
    for k, v in stages.items():
        print(f"  {k:<20} {v:6.2f}")


if __name__ == "__main__":
    main()
