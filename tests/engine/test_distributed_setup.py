"""The process group torchrun asks for: each rank on its own GPU before NCCL starts."""

from __future__ import annotations

import torch


def test_distributed_setup_selects_the_ranks_gpu_before_nccl(monkeypatch):
    import torch.distributed as dist

    from arlkit.engine import distributed

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend: calls.append(("init", backend)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.setup(torch.device("cuda", 1))
    assert calls == [("set", torch.device("cuda", 1)), ("init", "nccl")]
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
    calls.clear()
    distributed.setup(torch.device("cpu"))
    assert calls == [("init", "gloo")]
