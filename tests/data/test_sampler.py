"""Organ-balanced sampler: shares, exact per-epoch counts, determinism, shards, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.data.sampler import OrganBalancedSampler, draw_numbers, organ_shares
from arlkit.errors import ConfigError, DataError

# 60 breast (0), 30 liver (3), 9 cardiac (11), 1 unknown (16)
ORGANS = [0] * 60 + [3] * 30 + [11] * 9 + [16]


def test_shares_by_hand() -> None:
    np.testing.assert_allclose(organ_shares([60, 30, 9, 1], 1.0), [0.6, 0.3, 0.09, 0.01])
    np.testing.assert_allclose(organ_shares([60, 30, 9, 1], 0.0), [0.25] * 4)
    w = np.sqrt([60, 30, 9, 1])
    np.testing.assert_allclose(organ_shares([60, 30, 9, 1], 0.5), w / w.sum())
    np.testing.assert_allclose(organ_shares([5, 0, 5], 0.0), [0.5, 0.0, 0.5])  # empty groups


def test_natural_temperature_is_a_permutation() -> None:
    order = list(OrganBalancedSampler(ORGANS, 1.0, seed=3))
    assert sorted(order) == list(range(len(ORGANS)))
    assert order != list(range(len(ORGANS)))


def test_uniform_temperature_counts_exactly() -> None:
    sampler = OrganBalancedSampler(ORGANS, 0.0, seed=0)
    counts = Counter(ORGANS[i] for i in sampler)
    assert counts == {0: 25, 3: 25, 11: 25, 16: 25}
    assert sampler.group_quotas() == {0: 25, 3: 25, 11: 25, 16: 25}


def test_quotas_use_largest_remainders() -> None:
    # shares 0.6/0.3/0.09/0.01 of 7 draws: 4.2, 2.1, 0.63, 0.07 → floors 4, 2, 0, 0; one left
    # goes to the largest remainder (cardiac, 0.63)
    sampler = OrganBalancedSampler(ORGANS, 1.0, num_samples=7)
    assert sampler.group_quotas() == {0: 4, 3: 2, 11: 1, 16: 0}
    assert Counter(ORGANS[i] for i in sampler) == {0: 4, 3: 2, 11: 1}


def test_no_repeats_within_an_organ_before_it_is_exhausted() -> None:
    sampler = OrganBalancedSampler(ORGANS, 0.0, seed=1)
    drawn = list(sampler)
    breast = [i for i in drawn if ORGANS[i] == 0]  # 25 of 60: all distinct
    assert len(set(breast)) == 25
    unknown = [i for i in drawn if ORGANS[i] == 16]  # 25 draws of the single item
    assert unknown == [99] * 25
    cardiac = Counter(i for i in drawn if ORGANS[i] == 11)  # 25 of 9: each 2 or 3 times
    assert set(cardiac.values()) <= {2, 3} and len(cardiac) == 9


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = OrganBalancedSampler(ORGANS, 0.5, seed=7), OrganBalancedSampler(ORGANS, 0.5, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(OrganBalancedSampler(ORGANS, 0.5, seed=8)) != first


@settings(max_examples=40, deadline=None)
@given(
    organs=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    temperature=st.sampled_from([0.0, 0.3, 1.0]),
    num_samples=st.integers(1, 90),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 3),
)
def test_two_shards_partition_the_one_shard_sequence(organs, temperature, num_samples, seed, epoch):
    one = OrganBalancedSampler(organs, temperature, num_samples=num_samples, seed=seed)
    one.set_epoch(epoch)
    full = list(one)
    assert len(full) == num_samples
    shards = []
    for rank in (0, 1):
        s = OrganBalancedSampler(organs, temperature, num_samples=num_samples, seed=seed,
                                 rank=rank, world_size=2)  # fmt: skip
        s.set_epoch(epoch)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == -(-num_samples // 2)
    # positions interleave: rank r holds positions r, r+2, …; padding wraps to the start
    padded = full + full[: len(shards[0]) * 2 - num_samples]
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]
    assert Counter(shards[0]) + Counter(shards[1]) == Counter(padded)
    # and the per-organ counts are the quotas
    quotas = one.group_quotas()
    assert Counter(organs[i] for i in full) == Counter({g: q for g, q in quotas.items() if q})


def test_drop_last_shards() -> None:
    shards = [list(OrganBalancedSampler(ORGANS, 0.0, num_samples=11, rank=r, world_size=3,
                                        drop_last=True)) for r in range(3)]  # fmt: skip
    full = list(OrganBalancedSampler(ORGANS, 0.0, num_samples=11))
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == sorted(full[:9])


def test_resume_continues_the_same_sequence() -> None:
    sampler = OrganBalancedSampler(ORGANS, 0.5, seed=4)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(13)]
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["position"] == 13
    resumed = OrganBalancedSampler(ORGANS, 0.5, seed=4)
    resumed.load_state_dict(state)
    assert len(resumed) == 100 - 13
    tail = list(resumed)
    reference = OrganBalancedSampler(ORGANS, 0.5, seed=4)
    reference.set_epoch(2)
    assert head + tail == list(reference)
    assert len(resumed) == 100  # the next epoch is whole again


def test_resume_with_consumed_count_and_another_world_size() -> None:
    two = OrganBalancedSampler(ORGANS, 0.0, seed=5, rank=1, world_size=2)
    two.set_epoch(1)
    state = two.state_dict(consumed=10)  # each of 2 ranks used 10: 20 of the global order
    one = OrganBalancedSampler(ORGANS, 0.0, seed=5)
    one.load_state_dict(state)
    reference = OrganBalancedSampler(ORGANS, 0.0, seed=5)
    assert list(one) == reference.global_order(1)[20:].tolist()


def test_resume_refuses_other_settings() -> None:
    state = OrganBalancedSampler(ORGANS, 0.5, seed=1).state_dict()
    with pytest.raises(DataError, match="seed"):
        OrganBalancedSampler(ORGANS, 0.5, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="temperature"):
        OrganBalancedSampler(ORGANS, 1.0, seed=1).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"temperature": -0.1}, "temperature"), ({"rank": 2, "world_size": 2}, "rank"),
     ({"num_samples": 0}, "num_samples"), ({"temperature": float("nan")}, "temperature")],
)  # fmt: skip
def test_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OrganBalancedSampler(ORGANS, **kwargs)
    with pytest.raises(ConfigError, match="empty"):
        OrganBalancedSampler([])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=60))
def test_draw_numbers_count_earlier_occurrences(indices: list[int]) -> None:
    assert draw_numbers(indices) == [indices[:k].count(v) for k, v in enumerate(indices)]


@pytest.mark.parametrize("world", [1, 3])
def test_draws_number_the_repeats_of_rare_organs_across_shards(world: int) -> None:
    # at T = 0 the single unknown image is drawn 25 times per epoch: 25 distinct draws
    kw = dict(temperature=0.0, seed=4, world_size=world, drop_last=True)
    plain = [list(OrganBalancedSampler(ORGANS, rank=r, **kw)) for r in range(world)]
    pairs = [list(OrganBalancedSampler(ORGANS, rank=r, draws=True, **kw)) for r in range(world)]
    assert [[i for i, _ in shard] for shard in pairs] == plain  # the same order
    union = [pair for shard in pairs for pair in shard]
    assert len(set(union)) == len(union)  # no two draws share (index, draw)
    unknown = sorted(d for i, d in union if ORGANS[i] == 16)
    assert unknown == list(range(len(unknown))) and len(unknown) >= 24
