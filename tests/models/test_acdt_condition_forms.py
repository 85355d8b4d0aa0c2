"""ACDT block: organ batches that are not in canonical form reach the offsets correctly."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from arlkit.conditioners import OneHotConditioner, SoftEmbeddingConditioner
from arlkit.errors import ConfigError, UnknownOrganError
from arlkit.models.acdt import ACDTBlock
from arlkit.models.offset_net import DWConvOffsetNet
from arlkit.ops import deform_conv_reference

DIM, HEADS, GRID = 16, 2, (3, 4)


def _block(conditioner: type) -> ACDTBlock:
    torch.manual_seed(0)
    block = ACDTBlock(
        DIM,
        HEADS,
        conditioner=conditioner(DIM),
        deform_op=deform_conv_reference,
        offset_net=DWConvOffsetNet(DIM, HEADS * 9),
    ).eval()
    torch.nn.init.normal_(block.offset_net.proj.weight, std=0.5)  # as after training
    return block


@pytest.mark.parametrize("conditioner", [OneHotConditioner, SoftEmbeddingConditioner])
def test_every_documented_organ_form_conditions_like_canonical_labels(conditioner) -> None:
    block = _block(conditioner)
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 11])  # breast, cardiac
    want = block(x, GRID, labels)
    k = block.conditioner.num_classes
    forms = {
        "names": ["breast", "cardiac"],
        "indices": [0, 11],
        "probabilities (B, K)": F.one_hot(labels, k).float(),
        "int32 labels": labels.int(),
        "mapping of names": {"organ": ["breast", "cardiac"]},
    }
    for what, organ in forms.items():
        torch.testing.assert_close(block(x, GRID, organ), want, msg=what)
    with pytest.raises(UnknownOrganError, match="heart"):
        block(x, GRID, ["breast", "heart"])


class _ProbeOneHot(OneHotConditioner):
    """A built-in conditioner extended to read side information (``condition_keys``)."""

    condition_keys = ("probe",)

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.probe = torch.nn.Embedding(3, dim)

    def forward(self, condition, batch_size: int) -> torch.Tensor:
        return super().forward(condition, batch_size) + self.probe(condition["probe"])


class _ProbeSoft(SoftEmbeddingConditioner):
    """Reads the probe the intended way: through encode_condition, counting drop() calls."""

    condition_keys = ("probe",)

    def __init__(self, dim: int) -> None:
        super().__init__(dim, drop_prob=0.5)
        self.probe = torch.nn.Embedding(3, dim)
        self.drops = 0

    def drop(self, organ: torch.Tensor) -> torch.Tensor:
        self.drops += 1
        return super().drop(organ)

    def encode_condition(self, condition) -> torch.Tensor:
        return self.encode(condition["organ"]) + self.probe(condition["probe"])


@pytest.mark.parametrize("conditioner", [_ProbeOneHot, _ProbeSoft])
def test_a_conditioner_subclass_reading_side_information_receives_it(conditioner) -> None:
    block = _block(conditioner)
    x = torch.randn(1, 1 + GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(2))
    x = x.expand(2, -1, -1)
    organ = torch.tensor([3, 3])  # canonical: the backbone passes it so
    y = block(x, GRID, {"organ": organ, "probe": torch.tensor([0, 2])})
    assert (y[0] - y[1]).abs().max() > 1e-4  # same image and organ, different probe


def test_side_information_through_encode_condition_keeps_one_dropout_draw_per_image() -> None:
    # in training, the backbone draws conditioning dropout once per image (Conditioner.drop);
    # a block given the canonical condition must not draw again
    block = _block(_ProbeSoft).train()
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM)
    block(x, GRID, {"organ": torch.tensor([3, 5]), "probe": torch.tensor([0, 2])})
    assert block.conditioner.drops == 0
    block(x, GRID, {"organ": ["thyroid", "liver"], "probe": torch.tensor([0, 2])})
    assert block.conditioner.drops == 1  # not canonical: forward() validates and drops


def test_an_offset_net_of_the_wrong_width_is_named() -> None:
    # a third-party offset net that ignores the num_points it is given (here one group's)
    block = ACDTBlock(DIM, HEADS, conditioner=OneHotConditioner(DIM),
                      deform_op=deform_conv_reference, offset_net=DWConvOffsetNet(DIM, 9))
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM)
    with pytest.raises(ConfigError, match=re.escape(
            "offsets of shape (2, 18, 3, 4); with 2 offset groups and a 3×3 kernel they must "
            "be (B, 2·G·K, H, W) = (2, 36, 3, 4)")):
        block(x, GRID, torch.tensor([0, 1]))
