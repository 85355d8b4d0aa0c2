"""Parameter gradients keep their parameter's strides (DDP's gradient layout contract).

DDP copies every gradient into a bucket view with the parameter's strides and compares the
strides exactly; a mismatch (even on dims of size 1) costs a copy per step and prints "grad
strides do not match bucket view strides". The ACDT offset net reads a channels-last view of
the token grid, so its conv weights are strided to match (``offset_net._stride_like_grads``).
"""

from __future__ import annotations

import torch
from safetensors.torch import load, save

from arlkit.models.avit import AViT
from arlkit.models.offset_net import DWConvOffsetNet

SMALL = {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32,
         "patch_size": 8}


def _mismatches(model: torch.nn.Module) -> list[str]:
    return [f"{name}: grad {p.grad.stride()} vs param {p.stride()}"
            for name, p in model.named_parameters()
            if p.grad is not None and p.grad.stride() != p.stride()]


def _backward(model: AViT) -> None:
    torch.manual_seed(0)
    for blk in model.blocks:  # offsets away from zero, as after training
        torch.nn.init.normal_(blk.offset_net.proj.weight, 0, 0.3)
    out = model.forward_features(torch.randn(2, 1, 32, 32), torch.tensor([3, 11]))
    out.square().mean().backward()


def test_every_backbone_gradient_has_its_parameters_strides() -> None:
    torch.manual_seed(0)
    model = AViT(**SMALL)
    _backward(model)
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == {"mask_token"}  # no masking in this pass
    assert _mismatches(model) == []


def test_the_layout_survives_loading_a_checkpoint() -> None:
    torch.manual_seed(0)
    trained = AViT(**SMALL)
    _backward(trained)
    # a checkpoint written with the default strides (e.g. by an older arlkit) still loads into
    # the matching layout: load_state_dict copies into the parameters in place
    state = {k: v.contiguous().clone() for k, v in trained.state_dict().items()}
    blob = save(state)  # safetensors needs is_contiguous(): the re-strided weights are
    fresh = AViT(**SMALL)
    fresh.load_state_dict(load(blob))
    _backward(fresh)
    assert _mismatches(fresh) == []
    torch.testing.assert_close(fresh.blocks[0].offset_net.dw.weight,
                               trained.blocks[0].offset_net.dw.weight)
    assert save(fresh.state_dict())  # and the model saves as before


def test_offset_net_outputs_are_unchanged_by_the_strides() -> None:
    torch.manual_seed(0)
    net = DWConvOffsetNet(8, 6)
    torch.nn.init.normal_(net.proj.weight, 0, 0.3)
    grid = torch.randn(2, 16, 8).transpose(1, 2).reshape(2, 8, 4, 4)  # channels-last view
    plain_dw = torch.nn.functional.conv2d(grid, net.dw.weight.contiguous().clone(),
                                          net.dw.bias, padding=1, groups=8)
    plain = torch.nn.functional.conv2d(torch.nn.functional.gelu(plain_dw),
                                       net.proj.weight.contiguous().clone(), net.proj.bias)
    torch.testing.assert_close(net(grid), plain)
