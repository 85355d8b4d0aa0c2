"""UPerNet shapes, segmentation and fine-tuning mechanics (layer decay, drop-path, copies)."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_backbone
from timm.layers import DropPath

from arlkit.errors import ConfigError
from arlkit.eval.finetune import (
    Classifier,
    finetune_classifier,
    layer_decay_groups,
    layer_id,
    set_drop_path,
    warmup_cosine,
)
from arlkit.eval.segment import SegmentationModel, level_indices, train_segmentation
from arlkit.models.upernet import SimpleFeaturePyramid, UPerNet


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (40, 24)])
def test_upernet_output_has_the_input_size(size: tuple[int, int]) -> None:
    h, w = size[0] // 8, size[1] // 8
    feats = [torch.randn(2, 16, h, w) for _ in range(4)]
    head = UPerNet(16, num_classes=3, channels=8)
    out = head(feats, size)
    assert out.shape == (2, 3, *size)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_simple_pyramid_strides() -> None:
    feats = [torch.randn(1, 4, 5, 6) for _ in range(4)]
    shapes = [tuple(f.shape[-2:]) for f in SimpleFeaturePyramid(4)(feats)]
    assert shapes == [(20, 24), (10, 12), (5, 6), (3, 3)]


def test_level_indices() -> None:
    assert level_indices(12) == [2, 5, 8, 11]
    assert level_indices(2) == [0, 0, 1, 1]
    assert level_indices(4) == [0, 1, 2, 3]


def test_segmentation_model_with_avit() -> None:
    model = SegmentationModel(tiny_backbone(), num_classes=2, channels=8)
    x = torch.rand(2, 1, 32, 48)
    logits = model(x, torch.tensor([11, 11]))
    assert logits.shape == (2, 2, 32, 48)
    frozen = SegmentationModel(tiny_backbone(), num_classes=2, channels=8, freeze_backbone=True)
    frozen(x).sum().backward()
    assert all(p.grad is None for p in frozen.backbone.parameters())
    assert frozen.head.head.classifier.weight.grad is not None


def test_layer_ids_and_decayed_rates() -> None:
    depth = 2
    assert layer_id("cls_token", depth) == 0
    assert layer_id("backbone.patch_embed.proj.weight", depth) == 0
    assert layer_id("backbone.model.blocks.1.attn.qkv.weight", depth) == 2
    assert layer_id("backbone.norm.weight", depth) == 3
    assert layer_id("head.weight", depth) == 3
    model = Classifier(tiny_backbone(), 2)
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5, depth=depth)
    by_name = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["head.weight"])]["lr"] == 1.0
    assert by_name[id(named["backbone.blocks.1.attn.qkv.weight"])]["lr"] == 0.5
    assert by_name[id(named["backbone.blocks.0.attn.qkv.weight"])]["lr"] == 0.25
    assert by_name[id(named["backbone.pos_embed"])]["lr"] == 0.125
    assert by_name[id(named["backbone.pos_embed"])]["weight_decay"] == 0.0
    assert by_name[id(named["backbone.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_name[id(named["head.weight"])]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_classifier_refuses_an_unknown_pool_when_built() -> None:
    with pytest.raises(ConfigError, match=r"pool 'mean': choose one of cls, avg, cls\+avg"):
        Classifier(tiny_backbone(), 2, pool="mean")


def test_the_fine_tuning_head_starts_near_zero_as_in_mae() -> None:
    """MAE's main_finetune.py starts the head at std 2e-5: the first predictions are uniform
    and the first gradients reach the backbone scaled down, so a pretrained backbone is not
    pulled about by a random head (std 0.01, the linear-probe value, gave logits of ~0.1)."""
    torch.manual_seed(0)
    model = Classifier(tiny_backbone(), 3)
    assert model.head.weight.std().item() == pytest.approx(2e-5, rel=0.1)
    logits = model(torch.randn(4, 1, 32, 32))
    assert logits.abs().max().item() < 1e-3
    assert torch.allclose(logits.softmax(-1), torch.full((4, 3), 1 / 3), atol=1e-3)


def test_drop_path_rises_over_blocks() -> None:
    bb = tiny_backbone()
    set_drop_path(bb, 0.2)
    assert isinstance(bb.blocks[0].drop_path1, torch.nn.Identity)  # rate 0 at the first block
    assert isinstance(bb.blocks[1].drop_path2, DropPath) and bb.blocks[1].drop_path2.drop_prob == 0.2


def test_warmup_cosine() -> None:
    assert warmup_cosine(0, 10, 2) == 0.5
    assert warmup_cosine(2, 10, 2) == 1.0
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.0)


def _tiny_task(task: str, n: int, split: str):
    from arlkit.data.synthetic import SyntheticTask

    return SyntheticTask(task, n, split=split, size=32)


def test_finetune_trains_a_copy_and_is_deterministic() -> None:
    bb = tiny_backbone()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    train, val, test = (_tiny_task("breast", n, s) for n, s in ((8, "train"), (4, "val"), (6, "test")))
    kw = dict(epochs=2, batch_size=4, lr=1e-3, drop_path=0.1, seed=0)
    a = finetune_classifier(bb, train, val, test, 2, **kw)
    b = finetune_classifier(bb, train, val, test, 2, **kw)
    assert a.test_probs.shape == (6, 2) and a.steps == 4 and len(a.val_scores) == 2
    assert (a.test_probs == b.test_probs).all()
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_train_segmentation_predicts_masks() -> None:
    bb = tiny_backbone()
    train, val, test = (_tiny_task("cardiac_seg", n, s) for n, s in ((4, "train"), (2, "val"), (3, "test")))
    res = train_segmentation(bb, train, val, test, 2, steps=2, batch_size=2, channels=8, seed=0)
    assert res.pred.shape == res.target.shape == (3, 32, 32)
    assert set(res.target.ravel().tolist()) <= {0, 1} and res.steps == 2


def test_soft_dice_loss() -> None:
    from arlkit.eval.segment import soft_dice_loss

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target) == pytest.approx(0.0, abs=1e-4)
    # all wrong: no overlap, 12 + 4 pixels in the denominator, smoothing 1
    assert soft_dice_loss(-perfect, target) == pytest.approx(1 - 1 / 17, abs=1e-3)
    # ignored pixels are left out: a wrong prediction there changes nothing
    ignored = target.clone()
    ignored[0, 3, 3] = -100
    wrong_there = perfect.clone()
    wrong_there[0, :, 3, 3] = torch.tensor([-50.0, 50.0])
    assert soft_dice_loss(wrong_there, ignored) == pytest.approx(0.0, abs=1e-4)


def test_without_a_validation_split_no_scores_are_invented() -> None:
    # no validation split: the last epoch is kept and no "validation score" is recorded
    # (the epoch index used to be stored as the score and reported as val accuracy / Dice)
    from torch.utils.data import Subset

    bb = tiny_backbone()
    train, val, test = (_tiny_task("breast", n, s) for n, s in ((8, "train"), (2, "val"), (4, "test")))
    res = finetune_classifier(bb, train, Subset(val, []), test, 2, epochs=3, batch_size=4, seed=0)
    # epochs count from 1, as in the log lines ("epoch 3/3"): the last of 3 is epoch 3
    assert res.val_scores == [] and res.best_epoch == 3 and res.steps == 6
    res = finetune_classifier(bb, train, val, test, 2, epochs=3, batch_size=4, seed=0)
    assert len(res.val_scores) == 3
    assert res.best_epoch == 1 + res.val_scores.index(max(res.val_scores))  # first best


class _Unlabelled(torch.utils.data.Dataset):
    """Items of ``base`` whose mask is ``NO_MASK`` (-100) unless listed in ``labelled``;
    records the order in which items are read."""

    def __init__(self, base, labelled: set[int]) -> None:
        self.base, self.labelled, self.read = base, labelled, []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        self.read.append(i)
        sample = dict(self.base[i])
        if i not in self.labelled:
            sample["mask"] = torch.full_like(sample["mask"], -100)
        return sample


def test_segmentation_takes_no_step_on_a_batch_without_labelled_pixels() -> None:
    # A batch whose masks are all missing has a NaN cross-entropy (0 / 0): it must cost no
    # optimizer step (AdamW would still move the weights with its momentum and decay).
    bb = tiny_backbone()
    base, val, test = (_tiny_task("cardiac_seg", n, s) for n, s in ((4, "train"), (2, "val"), (2, "test")))
    train = _Unlabelled(base, {0, 1})
    res = train_segmentation(bb, train, val, test, 2, epochs=4, batch_size=2, channels=8, seed=0)
    pairs = [train.read[k : k + 2] for k in range(0, len(train.read), 2)]
    expected = sum(1 for p in pairs if set(p) & {0, 1})
    assert len(pairs) == 8 and expected < 8  # the seed gives some unlabelled batches
    assert res.steps == expected


def test_segmentation_without_any_training_mask_is_an_error() -> None:
    from arlkit.errors import DataError

    bb = tiny_backbone()
    base, val, test = (_tiny_task("cardiac_seg", n, s) for n, s in ((4, "train"), (2, "val"), (2, "test")))
    with pytest.raises(DataError, match="mask"):
        train_segmentation(bb, _Unlabelled(base, set()), val, test, 2, steps=2, batch_size=2,
                           channels=8, seed=0)
