from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.engine.data import BatchPlan, StepBatchSampler, ViewsDataset, seed_for, share_cores
from arlkit.errors import ConfigError


def order(epoch: int) -> list[int]:
    return [(i * 7 + epoch * 3) % 50 for i in range(50)]


def steps(plan: BatchPlan, start: int, total: int) -> list[list[tuple[int, ...]]]:
    batches = list(StepBatchSampler(order, plan, start, total))
    per_step = plan.accum_steps
    return [sum(batches[i : i + per_step], []) for i in range(0, len(batches), per_step)]


@settings(max_examples=30, deadline=None)
@given(world=st.sampled_from([1, 2, 4]), accum=st.sampled_from([1, 2]), start=st.integers(0, 9))
def test_processes_together_see_the_one_process_global_batch(world, accum, start):
    one = steps(BatchPlan(8, 1, 0, 1, 50), start, 12)
    shards = [steps(BatchPlan(8, world, r, accum, 50), start, 12) for r in range(world)]
    for s, batch in enumerate(one):
        union = sorted(key for shard in shards for key in shard[s])
        assert union == sorted(batch)


def test_epochs_advance_and_resume_continues_the_sequence():
    plan = BatchPlan(8, 1, 0, 1, 50)
    assert plan.steps_per_epoch == 6
    full = steps(plan, 0, 14)
    assert full[6][0][2] == 1 and full[5][0][2] == 0  # epoch tags
    assert steps(plan, 9, 14) == full[9:]


def test_repeated_draws_in_an_epoch_get_their_own_views():
    # an organ-balanced order draws rare images several times per epoch: each draw must
    # get other crops (the first keeps the (seed, epoch, index) stream), yet stay the same
    # on resume
    def balanced(epoch: int) -> list[int]:
        return [0, 1, 0, 2, 0, 1, 3, 4]

    plan = BatchPlan(4, 1, 0, 1, 8)
    keys = [k for batch in StepBatchSampler(balanced, plan, 0, 2) for k in batch]
    assert [k[3] for k in keys] == [0, 0, 1, 0, 2, 1, 0, 0]
    assert list(StepBatchSampler(balanced, plan, 1, 2))[0] == keys[4:]

    class Items:
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> dict:
            return {"organ": 0}

    def views(sample: dict, generator: torch.Generator) -> dict:
        return {**sample, "draw": float(torch.rand(1, generator=generator))}

    ds = ViewsDataset(Items(), views, seed=5)
    draws = [ds[k]["draw"] for k in keys]
    assert len({draws[0], draws[2], draws[4]}) == 3 and draws[1] != draws[5]
    first = float(torch.rand(1, generator=torch.Generator().manual_seed(seed_for(5, 0, 0))))
    assert draws[0] == first == ds[(0, 0, 0)]["draw"]  # keys without a repeat still work
    assert draws == [ds[k]["draw"] for k in keys]


def test_plan_errors():
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        BatchPlan(8, 3, 0, 1, 50)
    with pytest.raises(ConfigError, match="accum_steps=3"):
        BatchPlan(8, 2, 0, 3, 50)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        BatchPlan(64, 1, 0, 1, 50)


def test_seed_for_is_stable_and_mixes():
    assert seed_for(1, 2, 3) == seed_for(1, 2, 3)
    assert len({seed_for(0, e, i) for e in range(10) for i in range(100)}) == 1000
    assert 0 <= seed_for(2**40, 5) < 2**63


@pytest.mark.parametrize(
    ("device", "workers", "inside"),
    [("cpu", 1, 3), ("cpu", 3, 1), ("cpu", 6, 1), ("cpu", 0, 4), ("cuda", 2, 4)],
)
def test_share_cores_leaves_a_core_per_worker_and_restores(monkeypatch, device, workers, inside):
    # 4 cores, PyTorch on all of them: workers on the CPU take cores away (at least one stays)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with share_cores(torch.device(device), workers):
            assert torch.get_num_threads() == inside
        assert torch.get_num_threads() == 4
        with pytest.raises(RuntimeError), share_cores(torch.device(device), workers):
            raise RuntimeError("an error inside the block still restores")
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_share_cores_keeps_a_count_that_already_fits(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with share_cores(torch.device("cpu"), 2):  # 2 threads + 2 workers = 4 cores
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_mask_stream_is_no_views_stream():
    # the trainer's masks at step s once drew the random stream of item 7's views in epoch s
    from arlkit.data.sampler import view_seed
    from arlkit.engine.trainer import MASK_STREAM

    seeds = {view_seed(0, e, i, d) for e in range(20) for i in range(20) for d in range(3)}
    assert not {seed_for(0, step, *MASK_STREAM) for step in range(20)} & seeds
    assert len({seed_for(0, step, *MASK_STREAM) for step in range(20)}) == 20
