"""ACDT block: identity at init, organ dependence, plain mode, channel mixing."""

from __future__ import annotations

import pytest
import torch

from arlkit.conditioners import OneHotConditioner
from arlkit.errors import ConfigError
from arlkit.models.acdt import ACDTBlock, identity_deform_weight
from arlkit.models.offset_net import DWConvOffsetNet
from arlkit.ops import deform_conv_reference, deform_conv_torchvision

DIM, HEADS, GRID = 16, 2, (3, 4)


def _block(
    *,
    conditioned: bool = True,
    deformable: bool = True,
    mixing: str = "depthwise",
    op=deform_conv_reference,
) -> ACDTBlock:
    torch.manual_seed(0)
    return ACDTBlock(
        DIM,
        HEADS,
        deformable=deformable,
        channel_mixing=mixing,  # type: ignore[arg-type]
        conditioner=OneHotConditioner(DIM) if conditioned else None,
        deform_op=op,
        offset_net=DWConvOffsetNet(DIM, HEADS * 9),
    ).eval()


def _tokens(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 1 + GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(1))


def _wake_offsets(block: ACDTBlock, std: float = 0.5) -> None:
    """Give the zero-initialised last layer weights, as training would."""
    torch.nn.init.normal_(block.offset_net.proj.weight, std=std)
    torch.nn.init.normal_(block.deform_weight, std=0.3)


@pytest.mark.parametrize("mixing", ["depthwise", "grouped", "full"])
def test_block_at_init_equals_plain_vit_block(mixing: str) -> None:
    deform = _block(mixing=mixing)
    plain = _block(deformable=False)
    missing, unexpected = plain.load_state_dict(deform.state_dict(), strict=False)
    assert not missing and all(
        k.startswith(("conditioner", "offset_net", "deform")) for k in unexpected
    )
    x = _tokens()
    organ = torch.tensor([0, 11])
    torch.testing.assert_close(deform(x, GRID, organ), plain(x))


@pytest.mark.parametrize("mixing,groups", [("depthwise", 16), ("grouped", 2), ("full", 1)])
def test_identity_weight_copies_each_channel(mixing: str, groups: int) -> None:
    w = identity_deform_weight(DIM, 3, groups)
    x = torch.randn(1, DIM, 4, 5)
    y = deform_conv_reference(x, torch.zeros(1, 2 * 9, 4, 5), w, kernel_size=3)
    torch.testing.assert_close(y, x)


def test_output_depends_on_organ_once_offsets_are_nonzero() -> None:
    block = _block()
    x = _tokens(1).expand(2, -1, -1)
    organs = torch.tensor([0, 11])  # same image, breast vs cardiac
    y = block(x, GRID, organs)
    torch.testing.assert_close(y[0], y[1])  # zero offset net: the organ has no effect yet
    _wake_offsets(block)
    y = block(x, GRID, organs)
    assert (y[0] - y[1]).abs().max() > 1e-3
    _, off = block.sample(block.norm1(x), GRID, organs)
    assert (off[0] - off[1]).abs().max() > 1e-3


def test_output_ignores_organ_when_conditioning_is_disabled() -> None:
    block = _block(conditioned=False)
    _wake_offsets(block)
    x = _tokens(1).expand(2, -1, -1)
    y = block(x, GRID, torch.tensor([0, 11]))
    torch.testing.assert_close(y[0], y[1])
    plain = _block(deformable=False)
    plain.load_state_dict(block.state_dict(), strict=False)
    assert (y - plain(x)).abs().max() > 1e-3  # but the deformable sampling is active


def test_block_with_torchvision_op_matches_reference() -> None:
    a, b = _block(), _block(op=deform_conv_torchvision)
    _wake_offsets(a)
    b.load_state_dict(a.state_dict())
    x, organ = _tokens(), torch.tensor([3, 16])
    torch.testing.assert_close(a(x, GRID, organ), b(x, GRID, organ), atol=1e-5, rtol=1e-4)


def test_gradients_reach_offsets_weights_and_conditioner() -> None:
    block = _block().train()
    _wake_offsets(block, std=0.1)
    block(_tokens(), GRID, torch.tensor([1, 2])).square().sum().backward()
    for name in (
        "offset_net.proj.weight",
        "offset_net.dw.weight",
        "deform_weight",
        "conditioner.proj.weight",
        "attn.qkv.weight",
    ):
        grad = dict(block.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_deformable_block_needs_the_grid() -> None:
    block = _block()
    with pytest.raises(ConfigError, match="full token grid"):
        block(_tokens()[:, :5], GRID, None)
    with pytest.raises(ConfigError, match="deform_op and an offset_net"):
        ACDTBlock(DIM, HEADS, deformable=True)
    with pytest.raises(ConfigError, match="channel_mixing"):
        _block(mixing="diagonal")
