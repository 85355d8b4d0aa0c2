"""Optimizer settings when a checkpoint is continued in a new run directory."""

from __future__ import annotations

import io

from toy_recipes import RECIPES

from arlkit.engine import checkpoint as ckpt
from arlkit.engine.run import run_recipe


def test_a_new_run_from_a_checkpoint_trains_with_its_own_betas(toy, tmp_path):
    """The checkpoint brings the Adam moments and step counts; the betas (and the
    discriminator's learning rate) are the new recipe's (what its recipe.resolved.yaml
    records), not the old run's."""
    recipe = str(RECIPES / "quickstart.yaml")
    first = toy("quickstart.yaml", steps=1, **{"optim.betas": "[0.9, 0.95]"})
    assert run_recipe(recipe, first, stream=io.StringIO()) == 0
    start = ckpt.find_latest(str(tmp_path / "run"))
    _, old, _ = ckpt.read_checkpoint(start)
    assert [tuple(g["betas"]) for g in old["optimizer"]["param_groups"]] == [(0.9, 0.95)] * 2

    new_dir = tmp_path / "new"
    again = [o for o in toy("quickstart.yaml", steps=2, **{"optim.betas": "[0.5, 0.6]"})
             if not o.startswith("run_dir=")] + [f"run_dir={new_dir}",
                                                 "objectives.speckle_gan.params.lr=1e-3"]
    assert run_recipe(recipe, again, resume=start, stream=io.StringIO()) == 0
    _, state, _ = ckpt.read_checkpoint(ckpt.find_latest(str(new_dir)))
    groups = state["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.5, 0.6)] * 2
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[1]["weight_decay"] == 0.0
    assert [g["lr"] for g in state["objectives"]["speckle_gan"]["optimizer"]["param_groups"]] == [
        1e-3]
    # the moments went on from the checkpoint's: two Adam steps in all
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {2}
