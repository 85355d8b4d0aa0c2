"""Two processes (gloo on CPU): same λ from different local gradients; same DINO center."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from arlkit.balancers import GradNormRatio
from arlkit.losses import SelfDistillationLoss

WORLD = 2
TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        w = torch.linspace(-1, 1, 8, dtype=torch.float64).requires_grad_(True)  # same on all ranks
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        x_ref = torch.randn(8, generator=g, dtype=torch.float64) * (1 + rank)
        x_adv = torch.randn(8, generator=g, dtype=torch.float64)
        losses = {
            "mim": ((w - x_ref) ** 2).sum(),
            "speckle_gan": torch.nn.functional.softplus(-(w * x_adv).sum()),
        }
        (g_ref,) = torch.autograd.grad(losses["mim"], w, retain_graph=True)
        (g_adv,) = torch.autograd.grad(losses["speckle_gan"], w, retain_graph=True)
        _, weights = GradNormRatio(eps=1e-4)(losses, w)

        sd = SelfDistillationLoss(out_dim=5, center_momentum=0.5)
        teacher = torch.randn(4 * (1 + rank), 5, generator=g)  # batch sizes differ too
        student = torch.randn(teacher.shape[0], 5, generator=g)
        sd(student, teacher, 0)
        result = {
            "lambda": weights["lambda"],
            "ref_norm": g_ref.norm().item(),
            "adv_norm": g_adv.norm().item(),
            "g_ref": g_ref.tolist(),
            "g_adv": g_adv.tolist(),
            "teacher_sum": teacher.sum(0).tolist(),
            "teacher_rows": teacher.shape[0],
            "center": sd.center[0].tolist(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_processes_share_lambda_and_center(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, 9)
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(WORLD)]

    local = [x["ref_norm"] / (x["adv_norm"] + 1e-4) for x in r]
    assert local[0] != pytest.approx(local[1], rel=1e-3)  # local gradients really differ
    assert r[0]["lambda"] == r[1]["lambda"]
    # λ of the global batch: norms of the process-averaged gradients (as one process would see)
    mean_ref = torch.tensor([x["g_ref"] for x in r], dtype=torch.float64).mean(0).norm().item()
    mean_adv = torch.tensor([x["g_adv"] for x in r], dtype=torch.float64).mean(0).norm().item()
    assert r[0]["lambda"] == pytest.approx(mean_ref / (mean_adv + 1e-4), rel=1e-6)

    rows = sum(x["teacher_rows"] for x in r)
    global_mean = [(a + b) / rows for a, b in zip(r[0]["teacher_sum"], r[1]["teacher_sum"])]
    for x in r:
        assert x["center"] == pytest.approx([0.5 * m for m in global_mean], rel=1e-5, abs=1e-6)
