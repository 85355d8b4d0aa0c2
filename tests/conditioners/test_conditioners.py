"""Conditioners: hand computations, organ-batch validation and hypothesis properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arlkit.conditioners import (
    OneHotConditioner,
    SoftEmbeddingConditioner,
    canonical_organ,
)
from arlkit.errors import DataError, UnknownOrganError
from arlkit.taxonomy import Taxonomy

TAX = Taxonomy()
K = TAX.num_classes
CLASSES = {"onehot": OneHotConditioner, "soft_embedding": SoftEmbeddingConditioner}


def _make(name: str, dim: int = 8, taxonomy: Taxonomy = TAX) -> torch.nn.Module:
    torch.manual_seed(0)
    return CLASSES[name](dim, taxonomy).eval()


@pytest.mark.parametrize("name", sorted(CLASSES))
@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.integers(0, K), min_size=1, max_size=6))
def test_one_hot_soft_labels_equal_hard_labels(name: str, labels: list[int]) -> None:
    cond = _make(name)
    hard = torch.tensor(labels)
    soft = F.one_hot(hard, K + 1).float()  # (B, K+1)
    torch.testing.assert_close(cond(soft, len(labels)), cond(hard, len(labels)))
    if all(label < K for label in labels):  # (B, K) probabilities: no unknown column
        torch.testing.assert_close(cond(soft[:, :K], len(labels)), cond(hard, len(labels)))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(0.01, 1.0), min_size=K + 1, max_size=K + 1), min_size=1, max_size=4
    ),
    scale=st.one_of(st.floats(0.2, 0.98), st.floats(1.02, 5.0)),
)
def test_probabilities_not_summing_to_one_raise(rows: list[list[float]], scale: float) -> None:
    probs = torch.tensor(rows)
    probs = probs / probs.sum(1, keepdim=True)
    canonical_organ(probs, len(rows), TAX)  # normalised rows pass
    probs[0] *= scale
    with pytest.raises(DataError, match="sum to"):
        canonical_organ(probs, len(rows), TAX)


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.floats(0.0, 1.0), min_size=K + 1, max_size=K + 1))
def test_soft_embedding_mixes_class_vectors(weights: list[float]) -> None:
    probs = torch.tensor(weights) + 1e-3
    probs = (probs / probs.sum())[None]
    cond = _make("soft_embedding")
    expected = (probs[0, :, None] * cond.embedding).sum(0)  # Σ_j p_j e_j
    torch.testing.assert_close(cond(probs, 1)[0], expected)


def test_onehot_is_a_linear_projection_and_unknown_is_the_bias() -> None:
    cond = _make("onehot")
    out = cond(torch.tensor([3, K]), 2)
    torch.testing.assert_close(out[0], cond.proj.weight[:, 3] + cond.proj.bias)
    torch.testing.assert_close(out[1], cond.proj.bias)
    torch.testing.assert_close(cond(None, 2), cond.proj.bias.expand(2, -1))


def test_soft_embedding_unknown_is_its_own_learned_vector() -> None:
    cond = _make("soft_embedding")
    out = cond(None, 3)
    torch.testing.assert_close(out, cond.embedding[K].expand(3, -1))
    assert not torch.allclose(cond.embedding[K], cond.embedding[0])


def test_conditioning_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    cond = SoftEmbeddingConditioner(8, TAX, drop_prob=1.0)
    labels = torch.tensor([0, 5, 11])
    torch.testing.assert_close(cond.train()(labels, 3), cond.embedding[K].expand(3, -1))
    soft = F.one_hot(labels, K + 1).float()
    torch.testing.assert_close(cond.train()(soft, 3), cond.embedding[K].expand(3, -1))
    torch.testing.assert_close(cond.eval()(labels, 3), cond.embedding[labels])
    half = SoftEmbeddingConditioner(8, TAX, drop_prob=0.5).train()
    dropped = (half(torch.zeros(4000, dtype=torch.long), 4000) == half.embedding[K]).all(1)
    assert 0.45 < dropped.float().mean() < 0.55


def test_missing_names_in_a_sequence_are_unknown() -> None:
    organ = canonical_organ([TAX.names[3], None, "", "unknown", 2], 5, TAX)
    assert organ.tolist() == [3, K, K, K, 2]  # Taxonomy.index maps None and "" to unknown
    cond = _make("onehot")
    torch.testing.assert_close(cond([None, TAX.names[3]], 2)[0], cond.proj.bias)


def test_label_outside_taxonomy_names_label_and_known_ones() -> None:
    cond = _make("onehot")
    with pytest.raises(UnknownOrganError, match=r"'17'.*16=unknown"):
        cond(torch.tensor([0, 17]), 2)
    with pytest.raises(UnknownOrganError, match="-1"):
        cond(torch.tensor([-1]), 1)
    with pytest.raises(UnknownOrganError, match="did you mean 'cardiac'"):
        cond(["cardiak"], 1)


def test_names_and_small_taxonomy() -> None:
    tax = Taxonomy(("heart", "liver", "breast"))
    cond = OneHotConditioner(4, tax).eval()
    assert cond.proj.in_features == 3
    torch.testing.assert_close(cond(["liver", "unknown"], 2), cond(torch.tensor([1, 3]), 2))
    with pytest.raises(DataError, match=r"\(B, 3\) or \(B, 4\)"):
        cond(torch.full((2, 17), 1 / 17), 2)


@pytest.mark.parametrize(
    "organ,match",
    [
        (torch.tensor([0, 1, 2]), "expected 2 entries"),
        (torch.tensor([[0.5, -0.5] + [0.0] * (K - 2) + [1.0]] * 2), "non-negative"),
        (torch.tensor([[float("nan")] * (K + 1)] * 2), "finite"),
        (torch.zeros(2, 2, dtype=torch.long), r"\(B,\)"),
    ],
)
def test_bad_organ_batches_raise(organ: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        canonical_organ(organ, 2, TAX)


def test_registry_builds_with_injected_dim_and_taxonomy() -> None:
    from arlkit.registry import default_registries as reg

    tax = Taxonomy(("a", "b"))
    cond = reg.conditioners.build("soft_embedding", {"drop_prob": 0.0}, dim=6, taxonomy=tax)
    assert isinstance(cond, SoftEmbeddingConditioner) and cond.embedding.shape == (3, 6)
    onehot = reg.conditioners.build("onehot", {"bias": False}, dim=6, taxonomy=tax)
    assert onehot.proj.bias is None
    with pytest.raises(ValueError):
        reg.conditioners.build("soft_embedding", {"drop_prob": 2.0}, dim=6, taxonomy=tax)
