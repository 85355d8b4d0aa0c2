"""The embedded synthetic multi-organ B-mode corpus: ultrasound images with no files.

Images are simulated on the fly from organ phantoms through a scanner's signal chain
(scatterers, point-spread function, envelope detection, TGC, log compression, scan
conversion to linear, convex or phased-array geometry), deterministically from a seed.

Example::

    from arlkit.data.synthetic import SyntheticTask, SyntheticUltrasound

    corpus = SyntheticUltrasound(size=224, length=10_000)       # pretraining
    sample = corpus[0]   # {"image": (1, 224, 224), "fov", "organ", "label", "probe", ...}
    breast = SyntheticTask("breast", n=512, split="train")      # labelled, balanced
"""

from arlkit.data.synthetic.dataset import SPLITS, SyntheticTask, SyntheticUltrasound, sample_seed
from arlkit.data.synthetic.generate import PROBE_NAMES, SyntheticImage, render
from arlkit.data.synthetic.phantoms import PhantomFamily, all_phantoms, register_phantom
from arlkit.data.synthetic.stream import ShardedStream
from arlkit.data.synthetic.tasks import TASKS, TaskSpec

__all__ = [
    "PROBE_NAMES",
    "SPLITS",
    "TASKS",
    "PhantomFamily",
    "ShardedStream",
    "SyntheticImage",
    "SyntheticTask",
    "SyntheticUltrasound",
    "TaskSpec",
    "all_phantoms",
    "register_phantom",
    "render",
    "sample_seed",
]
