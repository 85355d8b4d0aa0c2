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


def test_memory_filesystem_run_dir():
    run = "memory://runs/ck"
    path = ckpt.write_checkpoint(run, 5, {"w": torch.ones(3)}, {"step": 5})
    assert path.startswith("memory://") and path.endswith("runs/ck/checkpoints/step-00000005")
    assert ckpt.find_latest(run) == path
    loaded, st, _ = ckpt.read_checkpoint(path)
    assert st["step"] == 5 and torch.equal(loaded["w"], torch.ones(3))
