"""Checkpoints: weights in safetensors, the rest in a ``weights_only``-loadable file.

Layout of a run directory::

    checkpoints/step-00000020/model.safetensors   student.*, teacher.*, aux.<objective>.*
    checkpoints/step-00000020/state.pt            optimizers, step, RNG states, sampler, ...
    checkpoints/step-00000020/COMPLETE            written last

A checkpoint is written into ``step-XXXXXXXX.tmp`` and renamed when complete (local
directories), or written in place with the ``COMPLETE`` marker last (remote fsspec
directories, where renames are not atomic). Readers only trust directories with the
marker, so a run killed while writing never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import struct
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = [
    "capture_rng",
    "check_fits",
    "checkpoints_after",
    "find_latest",
    "is_local",
    "list_checkpoints",
    "read_checkpoint",
    "restore_rng",
    "safetensors_header",
    "step_of",
    "write_checkpoint",
    "write_synced",
]

_NAME = re.compile(r"^step-(\d{8})$")
MARKER = "COMPLETE"


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local file system (where a rename is atomic)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _flat_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
        if value.numel() and ptr in seen:  # safetensors refuses shared storage
            value = value.clone()
        seen.add(ptr)
        out[key] = value
    return out


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch and CUDA as plain types and tensors.

    CUDA: the state of this process's current device only, as a one-element list. Every
    process seeds alike and draws alike, and only rank 0 writes, so its device's state is the
    state every rank restores onto its own device. (The states of all visible devices, read in
    rank 0's process, held untouched generators for the other ranks' devices, and a checkpoint
    from more GPUs than a machine has could not be restored there.)
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        # element 0: rank 0's device (older checkpoints list every visible device)
        torch.cuda.set_rng_state(state["cuda"][0])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run directory, oldest first."""
    fs, root = _fs(run_dir)
    base = f"{root.rstrip('/')}/checkpoints"
    if not fs.exists(base):
        return []
    found = []
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if _NAME.match(name) and fs.exists(f"{entry}/{MARKER}"):
            found.append((int(_NAME.match(name).group(1)), entry))
    return [_url(fs, path) for _, path in sorted(found)]


def step_of(path: str) -> int:
    """The step of a checkpoint directory ``.../step-XXXXXXXX``."""
    match = _NAME.match(path.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"{path} is not a checkpoint directory (step-XXXXXXXX)")
    return int(match.group(1))


def checkpoints_after(run_dir: str, step: int) -> list[str]:
    """Complete checkpoints of ``run_dir`` of later steps than ``step``, oldest first."""
    return [p for p in list_checkpoints(run_dir) if step_of(p) > step]


def find_latest(run_dir: str) -> str | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def write_checkpoint(
    run_dir: str,
    step: int,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    metadata: dict[str, str] | None = None,
    keep_last: int = 2,
) -> str:
    """Write a checkpoint atomically and delete all but the newest ``keep_last``.

    Checkpoints of later steps than ``step`` are deleted first: they are what the run did
    before it was resumed from an earlier checkpoint, and ``--resume`` would continue them
    (or the pruning delete this one) instead of the run as it now goes on.

    Returns:
        the checkpoint directory.
    """
    fs, root = _fs(run_dir)
    base = f"{root.rstrip('/')}/checkpoints"
    final = f"{base}/step-{step:08d}"
    for later in checkpoints_after(run_dir, step):
        _remove(later)
    weights = st_save(_flat_tensors(tensors), metadata=metadata or {})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if is_local(fs):
        tmp = f"{final}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, data in (("model.safetensors", weights), ("state.pt", buffer.getvalue()),
                           (MARKER, b"")):
            write_synced(os.path.join(tmp, name), data)
        if os.path.exists(final):  # aside first: a half-deleted one never looks complete
            shutil.rmtree(f"{final}.old.tmp", ignore_errors=True)
            os.replace(final, f"{final}.old.tmp")
        os.replace(tmp, final)
    else:
        fs.makedirs(final, exist_ok=True)
        if fs.exists(f"{final}/{MARKER}"):
            fs.rm(f"{final}/{MARKER}")
        fs.pipe_file(f"{final}/model.safetensors", weights)
        fs.pipe_file(f"{final}/state.pt", buffer.getvalue())
        fs.pipe_file(f"{final}/{MARKER}", b"")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        _remove(old)
    if is_local(fs):  # leftovers of a run killed while writing
        for entry in os.listdir(base):
            if entry.endswith(".tmp"):
                shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
    return _url(fs, final)


def write_synced(path: str, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` and flush it to the disk before returning,
    so a rename that follows never publishes a file whose bytes are still in flight."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(path: str) -> None:
    """Delete a checkpoint, its marker first: one deleted halfway is not complete."""
    fs, root = _fs(path)
    fs.rm(f"{root.rstrip('/')}/{MARKER}")
    fs.rm(root, recursive=True)


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Weights, state (``torch.load(weights_only=True)``) and safetensors metadata."""
    from arlkit.errors import ArlkitError

    fs, root = _fs(path)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{MARKER}"):
        raise ArlkitError(
            f"{path}: not a complete arlkit checkpoint (no {MARKER} marker); "
            "use a checkpoints/step-XXXXXXXX directory of a run"
        )
    with fs.open(f"{root}/model.safetensors", "rb") as handle:
        raw = handle.read()
    tensors = st_load(raw)
    metadata = dict(safetensors_header(io.BytesIO(raw).read).get("__metadata__", {}))
    with fs.open(f"{root}/state.pt", "rb") as handle:
        state = torch.load(io.BytesIO(handle.read()), weights_only=True, map_location="cpu")
    return tensors, state, metadata


def safetensors_header(read: Callable[[int], bytes]) -> dict[str, Any]:
    """The JSON header of a safetensors file from its first bytes (``read(n)``: the open
    file's ``read``, so a large file is not read whole): an 8-byte little-endian length,
    then the header (tensor names, dtypes, shapes and ``__metadata__``).

    Raises:
        ValueError: not a safetensors header.
    """
    try:
        (size,) = struct.unpack("<Q", read(8))
    except struct.error as exc:
        raise ValueError(f"no safetensors header ({exc})") from None
    if size > 100_000_000:
        raise ValueError(f"a header of {size} bytes is not a safetensors header")
    return json.loads(read(size))


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's weights, from the safetensors header alone."""
    from arlkit.errors import ArlkitError

    fs, root = _fs(path)
    weights = f"{root.rstrip('/')}/model.safetensors"
    try:
        with fs.open(weights, "rb") as handle:
            header = safetensors_header(handle.read)
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArlkitError(
            f"{path}: cannot read the weights of the checkpoint ({type(exc).__name__}: {exc}); "
            "the checkpoint is damaged — resume from another checkpoints/step-XXXXXXXX"
        ) from None


def _names(keys: list[str], limit: int = 5) -> str:
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_fits(path: str, expected: Mapping[str, torch.Tensor]) -> None:
    """Raise a ConfigError naming ``path`` and the mismatching weights when the checkpoint's
    weights are not exactly ``expected``'s names and shapes (what the model of the recipe
    saves); reads only the safetensors header and writes nothing."""
    from arlkit.errors import ConfigError

    have = tensor_shapes(path)
    want = {k: tuple(v.shape) for k, v in expected.items()}
    missing = sorted(k for k in want if k not in have)
    unexpected = sorted(k for k in have if k not in want)
    reshaped = sorted(k for k in want if k in have and have[k] != want[k])
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) of the model are not in the checkpoint: "
                     f"{_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} weight(s) of the checkpoint are not in the model: "
                     f"{_names(unexpected)}")
    if reshaped:
        shown = [f"{k} (checkpoint {list(have[k])}, model {list(want[k])})" for k in reshaped]
        parts.append(f"{len(reshaped)} weight(s) differ in shape: {_names(shown, 3)}")
    raise ConfigError(
        f"--resume {path}: the checkpoint does not fit the model this recipe builds; "
        + "; ".join(parts)
        + ". It was written with another recipe (model, objectives or their params): resume "
        "with that run's recipe.resolved.yaml, or train this recipe in a new run directory. "
        "Nothing was written."
    )
