"""Synthetic datasets: the sample contract, determinism, organs/probes, tasks, sharding, registry."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydantic
import pytest
import torch
from torch.utils.data import DataLoader

from arlkit.data.synthetic import (
    TASKS,
    PhantomFamily,
    ShardedStream,
    SyntheticTask,
    SyntheticUltrasound,
    all_phantoms,
    render,
)
from arlkit.data.synthetic import phantoms as phantom_registry
from arlkit.data.synthetic.phantoms.cardiac import VIEWS
from arlkit.data.synthetic.phantoms.common import new_tissue
from arlkit.errors import ConfigError, UnknownOrganError
from arlkit.plugins import PluginHost
from arlkit.registry import Registries
from arlkit.taxonomy import DEFAULT_ORGANS, Taxonomy

SIZE = 48


def check_contract(sample: dict, size: int, taxonomy: Taxonomy) -> None:
    img, fov = sample["image"], sample["fov"]
    assert img.shape == (1, size, size) and img.dtype == torch.float32
    assert fov.shape == (1, size, size) and fov.dtype == torch.bool
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img[~fov].abs().max() == 0  # black outside the field of view
    assert 0.2 < fov.float().mean() <= 1.0
    assert isinstance(sample["organ"], int) and 0 <= sample["organ"] < taxonomy.num_classes
    assert isinstance(sample["label"], int)
    assert sample["probe"] in ("linear", "convex", "phased")
    assert isinstance(sample["id"], str) and sample["patient_id"] == ""
    assert isinstance(sample["seed"], int) and sample["valid"] is True


def test_every_organ_of_the_default_taxonomy_has_a_phantom() -> None:
    assert set(all_phantoms()) == set(DEFAULT_ORGANS)
    corpus = SyntheticUltrasound(size=SIZE, length=64)
    assert corpus.organs == list(DEFAULT_ORGANS)
    assert corpus.classes == [*DEFAULT_ORGANS, "unknown"]


def test_corpus_samples_follow_the_contract_and_organ_indices() -> None:
    tax = Taxonomy()
    corpus = SyntheticUltrasound(size=SIZE, length=40, seed=3)
    for i in range(0, 40, 3):
        s = corpus[i]
        check_contract(s, SIZE, tax)
        assert s["organ"] == corpus.organ_indices[i] == tax.index(corpus.organ(i))
        assert s["label"] == -1 and "mask" not in s
        assert s["probe"] in all_phantoms()[corpus.organ(i)].probes
    assert corpus[-1]["id"] == corpus[39]["id"]
    with pytest.raises(IndexError):
        corpus[40]


def test_items_are_pure_functions_of_seed_and_index() -> None:
    a = SyntheticUltrasound(size=SIZE, length=20, seed=5)
    b = SyntheticUltrasound(size=SIZE, length=20, seed=5)
    c = SyntheticUltrasound(size=SIZE, length=20, seed=6)
    for i in (0, 7, 19):
        torch.testing.assert_close(a[i]["image"], b[i]["image"], rtol=0, atol=0)
        assert a[i]["seed"] == b[i]["seed"] != c[i]["seed"]
    b[3], b[11]  # access order does not matter (no shared random state)
    torch.testing.assert_close(a[12]["image"], b[12]["image"], rtol=0, atol=0)
    assert not torch.equal(a[0]["image"], a[1]["image"])
    # the seed alone (with organ, probe and variant) reproduces the image
    s, img = a[7], a.render(7)
    again = render(img.organ, s["seed"], SIZE, probe=img.probe, variant=img.variant)
    np.testing.assert_array_equal(again.image, s["image"][0].numpy())


def test_organ_subset_weights_and_probes() -> None:
    corpus = SyntheticUltrasound(
        size=SIZE,
        length=100,
        organs=["lung", "breast"],
        probes=["convex"],
        organ_weights={"breast": 3, "lung": 1},
    )
    assert corpus.organs == ["breast", "lung"]  # taxonomy order
    counts = Counter(corpus.organ_indices)
    assert counts == {0: 75, 12: 25}  # exact proportions
    assert {corpus[i]["probe"] for i in range(0, 100, 17)} == {"convex"}


def test_bad_organs_probes_and_sizes_are_clear_errors() -> None:
    with pytest.raises(UnknownOrganError, match="brest.*did you mean 'breast'"):
        SyntheticUltrasound(size=SIZE, organs=["brest"])
    with pytest.raises(ConfigError, match="probes"):
        SyntheticUltrasound(size=SIZE, probes=["sector"])
    with pytest.raises(ConfigError, match="size"):
        SyntheticUltrasound(size=16)
    with pytest.raises(ConfigError, match="organ_weights"):
        SyntheticUltrasound(size=SIZE, organs=["lung"], organ_weights={"liver": 1.0})


def test_user_taxonomy_organs_without_a_phantom() -> None:
    tax = Taxonomy(("elbow", "cardiac", "wrist", "lung"))
    corpus = SyntheticUltrasound(size=SIZE, length=10, taxonomy=tax)
    assert corpus.organs == ["cardiac", "lung"]  # default: the organs that have a phantom
    assert set(corpus.organ_indices) == {1, 3}
    assert corpus[0]["organ"] in (1, 3)
    with pytest.raises(ConfigError, match="no phantom family for organ.*elbow, wrist"):
        SyntheticUltrasound(size=SIZE, organs=["elbow", "lung", "wrist"], taxonomy=tax)
    with pytest.raises(ConfigError, match="no organ of the taxonomy has a phantom"):
        SyntheticUltrasound(size=SIZE, taxonomy=Taxonomy(("elbow",)))


def test_a_registered_phantom_extends_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    def elbow(c, rng, variant):
        return new_tissue(c, rng, 0.5 if variant == "dark" else 1.5)

    monkeypatch.setitem(phantom_registry.PHANTOMS, "elbow", None)  # restored after the test
    phantom_registry.register_phantom(
        PhantomFamily("elbow", elbow, ("linear",), {"dark": 0.5, "bright": 0.5}), replace=True
    )
    with pytest.raises(ConfigError, match="already registered"):
        phantom_registry.register_phantom(PhantomFamily("elbow", elbow, ("linear",)))
    corpus = SyntheticUltrasound(size=SIZE, length=4, taxonomy=Taxonomy(("elbow",)))
    dark = render("elbow", 1, SIZE, variant="dark").image
    bright = render("elbow", 1, SIZE, variant="bright").image
    assert bright.mean() > dark.mean() + 0.1  # 10 dB brighter tissue
    check_contract(corpus[0], SIZE, Taxonomy(("elbow",)))


def test_render_rejects_unknown_variants_and_probes() -> None:
    with pytest.raises(ConfigError, match="no variant 'nodule'.*cyst"):
        render("liver", 0, SIZE, variant="nodule")
    with pytest.raises(ConfigError, match="unknown probe"):
        render("liver", 0, SIZE, probe="annular")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_sets_are_balanced_labelled_and_split_disjoint(task: str) -> None:
    n = 10
    spec = TASKS[task]
    sets = {
        split: SyntheticTask(task, n, split=split, size=SIZE, seed=1)
        for split in ("train", "val", "test")
    }
    train = sets["train"]
    assert train.classes == list(spec.classes) and len(train) == n
    groups = Counter(train.groups)
    assert max(groups.values()) - min(groups.values()) <= 1  # balanced over classes/groups
    seeds = {split: {d[i]["seed"] for i in range(n)} for split, d in sets.items()}
    assert not (
        seeds["train"] & seeds["val"]
        or seeds["train"] & seeds["test"]
        or seeds["val"] & seeds["test"]
    )
    for i in range(0, n, 3):
        s = train[i]
        check_contract(s, SIZE, Taxonomy())
        assert s["organ"] == Taxonomy().index(spec.organ)
        assert s["label"] == train.labels[i]
        variant = train.render(i).variant
        if spec.segmentation:
            assert (
                s["label"] == -1
                and s["mask"].shape == (SIZE, SIZE)
                and s["mask"].dtype == torch.long
            )
        else:
            assert variant in spec.variants[s["label"]] and spec.label_of(variant) == s["label"]
            assert "mask" not in s
    again = SyntheticTask(task, n, split="train", size=SIZE, seed=1)
    torch.testing.assert_close(again[4]["image"], train[4]["image"], rtol=0, atol=0)


def test_cardiac_views_carry_the_view_label() -> None:
    data = SyntheticTask("cardiac_view", 8, size=SIZE)
    assert data.classes == list(VIEWS) == ["plax", "psax", "a4c", "a2c"]
    for i in range(8):
        assert data.render(i).variant == VIEWS[data.labels[i]]


def test_left_ventricle_mask_is_a_dark_blood_pool_inside_the_sector() -> None:
    data = SyntheticTask("cardiac_seg", 8, size=96, seed=2)
    for i in range(8):
        s = data[i]
        mask, img, fov = s["mask"].bool(), s["image"][0], s["fov"][0]
        assert set(s["mask"].unique().tolist()) == {0, 1}
        assert (mask & ~fov).sum() == 0
        assert 0.01 < mask.float().mean() < 0.25
        # a ring just outside the cavity (myocardium) is brighter than the blood pool
        grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 9, 1, 4)[0, 0].bool()
        ring = grown & ~mask & fov
        assert img[ring].mean() > img[mask].mean() + 0.1


def test_unknown_task_and_split() -> None:
    with pytest.raises(ConfigError, match="did you mean 'breast'"):
        SyntheticTask("brest", 4)
    with pytest.raises(ConfigError, match="split"):
        SyntheticTask("breast", 4, split="holdout")
    with pytest.raises(UnknownOrganError, match="breast"):
        SyntheticTask("breast", 4, taxonomy=Taxonomy(("lung",)))


class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("shuffle", [False, True])
def test_sharded_stream_covers_each_index_once_across_ranks(shuffle: bool) -> None:
    shards = [
        list(ShardedStream(_Indices(), shuffle=shuffle, seed=4, rank=r, world_size=3))
        for r in range(3)
    ]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(23))
    single = list(ShardedStream(_Indices(), shuffle=shuffle, seed=4, rank=0, world_size=1))
    assert sorted(single) == list(range(23))
    # the 3 shards interleave the single-process order
    assert [single[k] for k in range(1, 23, 3)] == shards[1]


def test_sharded_stream_epochs_workers_and_infinite() -> None:
    stream = ShardedStream(_Indices(), seed=0, rank=1, world_size=2)
    first = list(stream)
    stream.set_epoch(1)
    assert sorted(
        list(stream) + list(ShardedStream(_Indices(), seed=0, rank=0, world_size=2).indices(1))
    ) == list(range(23))
    assert list(stream) != first
    loader = DataLoader(
        ShardedStream(_Indices(), rank=0, world_size=1), num_workers=2, batch_size=None
    )
    assert sorted(int(i) for i in loader) == list(range(23))
    endless = iter(ShardedStream(_Indices(), infinite=True))
    assert len([next(endless) for _ in range(50)]) == 50
    with pytest.raises(ConfigError, match="rank"):
        ShardedStream(_Indices(), rank=2, world_size=2)


def test_stream_of_the_corpus_batches_with_the_default_collate() -> None:
    stream = ShardedStream(SyntheticUltrasound(size=32, length=6), shuffle=False)
    batch = next(iter(DataLoader(stream, batch_size=3)))
    assert batch["image"].shape == (3, 1, 32, 32) and batch["organ"].shape == (3,)


def test_registered_datasets_validate_their_params() -> None:
    registries = Registries()
    PluginHost(registries, builtins=("arlkit.data.synthetic.plugin",), entry_points=False).load()
    assert registries.datasets.names() == ["synthetic", "synthetic_task"]
    tax = Taxonomy(("lung", "cardiac"))
    corpus = registries.datasets.build("synthetic", {"size": 32, "length": 5}, taxonomy=tax)
    assert isinstance(corpus, SyntheticUltrasound) and corpus.organs == ["lung", "cardiac"]
    task = registries.datasets.build(
        "synthetic_task",
        {"task": "cardiac_view", "n": 4, "split": "test", "size": 32},
        taxonomy=tax,
    )
    assert isinstance(task, SyntheticTask) and task[0]["organ"] == 1
    entry = registries.datasets.get("synthetic")
    for bad in ({"probes": ["sector"]}, {"lenght": 3}, {"seed": "zero"}):
        with pytest.raises(pydantic.ValidationError):
            entry.validate_params(bad)
    # range limits: pydantic (Annotated[..., Field(ge=32)]) or the dataset itself, both ValueErrors
    with pytest.raises(ValueError, match="size"):
        registries.datasets.build("synthetic", {"size": 8}, taxonomy=tax)
    with pytest.raises(pydantic.ValidationError):
        registries.datasets.get("synthetic_task").validate_params({"task": "liver"})
