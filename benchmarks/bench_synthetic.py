"""Images per second per CPU core of the synthetic B-mode generator (1 thread).

Measures ``SyntheticUltrasound(size)[i]`` (phantom → physics → scan conversion → tensor)
over the whole multi-organ mix and per organ, against a reference in the same process:
decoding the same images from in-memory PNG files with Pillow (what a file-based corpus
pays per image before any augmentation). Repeats are interleaved after a warm-up; the
table shows medians. Target of issue 5: >= 50 images/s per core at 224×224.

Usage::

    python benchmarks/bench_synthetic.py [--size 224] [--images 64] [--repeats 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy/torch load their pools

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from arlkit.data.synthetic import SyntheticUltrasound  # noqa: E402

TARGET = 50.0


def rate(fn: Callable[[int], object], indices: list[int]) -> float:
    """Images per second of ``fn`` over ``indices``."""
    start = time.perf_counter()
    for i in indices:
        fn(i)
    return len(indices) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="images per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    corpus = SyntheticUltrasound(size=args.size, length=100_000, seed=0)
    mix = list(range(args.images))
    pngs = []
    for i in mix:  # the reference: the same images as PNG files in memory
        buf = io.BytesIO()
        Image.fromarray((corpus[i]["image"][0].numpy() * 255).astype(np.uint8)).save(buf, "PNG")
        pngs.append(buf.getvalue())

    def decode(i: int) -> torch.Tensor:
        img = Image.open(io.BytesIO(pngs[i])).convert("L")
        return torch.from_numpy(np.asarray(img, np.float32) / 255).unsqueeze(0)

    by_organ: dict[str, list[int]] = {}
    for i in range(2000):
        by_organ.setdefault(corpus.organ(i), []).append(i)
    per_organ = max(4, args.images // 4)

    for name in corpus.organs:  # warm-up: grids, FFT plans, caches
        corpus[by_organ[name][0]]
    results: dict[str, list[float]] = {"all organs (mix)": [], "PNG decode (reference)": []}
    for name in corpus.organs:
        results[name] = []
    for _ in range(args.repeats):  # interleaved
        results["all organs (mix)"].append(rate(corpus.__getitem__, mix))
        results["PNG decode (reference)"].append(rate(decode, mix))
        for name in corpus.organs:
            results[name].append(rate(corpus.__getitem__, by_organ[name][:per_organ]))

    gen = statistics.median(results["all organs (mix)"])
    ref = statistics.median(results["PNG decode (reference)"])
    print(f"# synthetic generator, {args.size}x{args.size}, 1 thread")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"numpy {np.__version__}, {args.repeats} interleaved repeats, medians"
    )
    print(f"{'workload':<26} {'images/s':>10} {'ms/image':>10}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<26} {med:>10.1f} {1000 / med:>10.2f}")
    print(
        f"\ngenerator: {gen:.1f} images/s per core "
        f"({gen / TARGET:.2f}x the {TARGET:.0f}/s target; "
        f"{gen / ref:.3f}x the speed of decoding the same images from PNG)"
    )


if __name__ == "__main__":
    main()
