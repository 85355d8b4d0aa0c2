from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from arlkit.engine import checkpoint as ckpt
from arlkit.errors import ArlkitError


def state():
    return {"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}},
                                     "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]},
            "rng": ckpt.capture_rng()}


def test_roundtrip_weights_only_and_metadata(tmp_path):
    run = str(tmp_path / "run")
    tensors = {"student.w": torch.arange(6.0).reshape(2, 3), "teacher.w": torch.zeros(2)}
    path = ckpt.write_checkpoint(run, 3, tensors, state(), metadata={"recipe": "x"})
    assert path.endswith("checkpoints/step-00000003")
    loaded, st, meta = ckpt.read_checkpoint(path)
    assert torch.equal(loaded["student.w"], tensors["student.w"])
    assert st["step"] == 3 and st["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert meta == {"recipe": "x"}


def test_shared_storage_is_saved(tmp_path):
    base = torch.arange(4.0)
    path = ckpt.write_checkpoint(str(tmp_path), 1, {"a": base, "b": base}, {"step": 1})
    loaded, _, _ = ckpt.read_checkpoint(path)
    assert torch.equal(loaded["a"], loaded["b"])


def test_keep_last_and_latest_ignore_incomplete(tmp_path):
    run = str(tmp_path)
    for step in (1, 2, 3):
        ckpt.write_checkpoint(run, step, {"w": torch.ones(1) * step}, {"step": step}, keep_last=2)
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(run)]
    assert names == ["step-00000002", "step-00000003"]
    # a run killed mid-write leaves a .tmp directory or a directory without the marker
    os.makedirs(tmp_path / "checkpoints" / "step-00000009.tmp")
    os.makedirs(tmp_path / "checkpoints" / "step-00000010")
    assert os.path.basename(ckpt.find_latest(run)) == "step-00000003"
    with pytest.raises(ArlkitError, match="not a complete arlkit checkpoint"):
        ckpt.read_checkpoint(str(tmp_path / "checkpoints" / "step-00000010"))
    ckpt.write_checkpoint(run, 4, {"w": torch.ones(1)}, {"step": 4}, keep_last=2)
    assert not (tmp_path / "checkpoints" / "step-00000009.tmp").exists()


def test_rng_capture_restore_reproduces_draws():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = ckpt.capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


class FakeCuda:
    """``torch.cuda`` of a machine with ``n`` GPUs, this process on ``current`` (no GPU here)."""

    def __init__(self, n: int, current: int):
        self.n, self.current, self.states = n, current, {i: torch.tensor([i]) for i in range(n)}

    def patch(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[self.current])
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: list(self.states.values()))

        def set_state(new, device="cuda"):
            self.states[self.current] = new

        def set_all(new):
            for i, value in enumerate(new):
                if i >= self.n:
                    raise RuntimeError(f"invalid device ordinal {i}")
                self.states[i] = value

        monkeypatch.setattr(cuda, "set_rng_state", set_state)
        monkeypatch.setattr(cuda, "set_rng_state_all", set_all)


def test_cuda_rng_is_rank_0s_device_restored_onto_each_ranks_own(monkeypatch):
    """Rank 0 writes: the saved CUDA state is its own device's, and rank r restores it onto
    device r (every rank seeds and draws alike); a checkpoint of an 8-GPU run restores on one."""
    rank0 = FakeCuda(8, current=0)
    rank0.states[0] = torch.tensor([42])  # rank 0's generator has drawn; the others are untouched
    rank0.patch(monkeypatch)
    saved = ckpt.capture_rng()
    assert [t.tolist() for t in saved["cuda"]] == [[42]]
    rank3 = FakeCuda(8, current=3)
    rank3.patch(monkeypatch)
    ckpt.restore_rng(saved)
    assert rank3.states[3].tolist() == [42]
    assert rank3.states[0].tolist() == [0]  # another rank's device is not touched
    single = FakeCuda(1, current=0)
    single.patch(monkeypatch)
    older = dict(saved, cuda=[torch.tensor([7])] + [torch.tensor([i]) for i in range(1, 8)])
    ckpt.restore_rng(older)  # checkpoints before 2026-11-29 list every visible device
    assert [t.tolist() for t in single.states.values()] == [[7]]


def test_memory_filesystem_run_dir():
    run = "memory://runs/ck"
    path = ckpt.write_checkpoint(run, 5, {"w": torch.ones(3)}, {"step": 5})
    assert path.startswith("memory://") and path.endswith("runs/ck/checkpoints/step-00000005")
    assert ckpt.find_latest(run) == path
    loaded, st, _ = ckpt.read_checkpoint(path)
    assert st["step"] == 5 and torch.equal(loaded["w"], torch.ones(3))
