"""Losses, balancers and heads are registered, and the recipe schema validates their params."""

from __future__ import annotations

import pydantic
import pytest

from arlkit.balancers import FixedWeights, GradNormRatio
from arlkit.errors import ConfigError
from arlkit.losses import MIMLoss, SelfDistillationLoss, SpeckleGANLoss
from arlkit.models.discriminator import PatchDiscriminator
from arlkit.models.heads import DINOHead
from arlkit.recipe.schema import BalancerSpec, HeadSpec
from arlkit.registry import default_registries as R


def test_registered_names() -> None:
    assert {"mim", "speckle_gan", "self_distillation"} <= set(R.losses.names())
    assert {"gradnorm_ratio", "fixed"} <= set(R.balancers.names())
    assert {"dino_head", "patch_discriminator"} <= set(R.heads.names())
    assert R.losses.get("mim").factory is MIMLoss
    assert R.losses.get("speckle_gan").factory is SpeckleGANLoss
    assert R.losses.get("self_distillation").factory is SelfDistillationLoss
    assert R.balancers.get("gradnorm_ratio").factory is GradNormRatio
    assert R.balancers.get("fixed").factory is FixedWeights


def test_build_with_params() -> None:
    mim = R.losses.build("mim", {"patch_size": 16, "norm_pix": True})
    assert isinstance(mim, MIMLoss) and mim.norm_pix and mim.patch_size == 16
    gan = R.losses.build("speckle_gan", {"start_step": 100, "disc_loss": "hinge"})
    assert gan.start_step == 100 and gan.disc_loss == "hinge"
    sd = R.losses.build("self_distillation", {"out_dim": 128, "warmup_teacher_temp_steps": 5})
    assert sd.center.shape == (1, 128)
    bal = R.balancers.build("gradnorm_ratio", {"every": 10, "max_weight": 100.0})
    assert bal.every == 10 and bal.max_weight == 100.0
    head = R.heads.build("dino_head", {"out_dim": 32, "hidden_dim": 16}, in_dim=8)
    assert isinstance(head, DINOHead) and head.in_dim == 8
    disc = R.heads.build("patch_discriminator", {"base_channels": 8}, in_dim=1)
    assert isinstance(disc, PatchDiscriminator) and disc.in_dim == 1


def test_recipe_schema_validates_params() -> None:
    ctx = {"registries": R}
    spec = BalancerSpec.model_validate(
        {"name": "gradnorm_ratio", "params": {"every": "10"}}, context=ctx
    )
    assert spec.params["every"] == 10 and spec.params["reference"] == "mim"
    with pytest.raises(pydantic.ValidationError, match="every"):
        BalancerSpec.model_validate(
            {"name": "gradnorm_ratio", "params": {"every": "x"}}, context=ctx
        )
    with pytest.raises(pydantic.ValidationError, match="max_wieght"):
        BalancerSpec.model_validate(
            {"name": "gradnorm_ratio", "params": {"max_wieght": 1.0}}, context=ctx
        )
    with pytest.raises(pydantic.ValidationError, match="did you mean 'gradnorm_ratio'"):
        BalancerSpec.model_validate({"name": "gradnorm_ration"}, context=ctx)
    with pytest.raises(pydantic.ValidationError, match="disc_loss"):
        R.losses.get("speckle_gan").validate_params({"disc_loss": "wgan"})
    head = HeadSpec.model_validate({"name": "dino_head", "params": {"nlayers": 2}}, context=ctx)
    assert "in_dim" not in head.params  # injected by the builder, not a recipe key


def test_factory_rejects_values_the_types_allow() -> None:
    with pytest.raises(ConfigError, match="fallback"):
        R.balancers.build("gradnorm_ratio", {"max_weight": 1.0, "fallback": 5.0})
