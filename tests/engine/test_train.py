"""Training end to end at toy size: recipes, exact resume, faults, export."""

from __future__ import annotations

import importlib.metadata
import io
import json
import pathlib
import re
import shutil

import pytest
import torch
from toy_recipes import RECIPES, partly_unreadable_dataset

from arlkit.engine import checkpoint as ckpt
from arlkit.engine.objectives import Objective
from arlkit.engine.run import run_recipe
from arlkit.engine.trainer import TrainingStopped
from arlkit.errors import ArlkitError, ConfigError
from arlkit.recipe import RecipeError, load_recipe

ALL_RECIPES = sorted(p.name for p in RECIPES.glob("*.yaml"))


def metrics(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_expected_recipes_exist():
    assert {"paper.yaml", "quickstart.yaml", "ablation-mim.yaml", "ablation-mim-acdt.yaml",
            "ablation-mim-acdt-adv.yaml", "mae.yaml", "dino.yaml", "ibot.yaml"} <= set(ALL_RECIPES)
    for name in ALL_RECIPES:
        assert (RECIPES / name).read_text().startswith("#"), f"{name} needs a header comment"


@pytest.mark.parametrize("name", ALL_RECIPES)
def test_every_recipe_validates_and_trains_two_steps(name, toy, tmp_path):
    load_recipe(str(RECIPES / name))  # the recipe as shipped is valid
    out = io.StringIO()
    assert run_recipe(str(RECIPES / name), toy(name), stream=out) == 0
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    recipe = load_recipe(str(RECIPES / name))
    for obj in recipe.objectives:
        assert all(torch.isfinite(torch.tensor(r[f"loss_{obj.name}"])) for r in rows)
    assert (run / "recipe.resolved.yaml").exists()
    env = json.loads((run / "environment.json").read_text())
    assert env["kernels"]["numba"] == importlib.metadata.version("numba")  # the dev extra has it
    assert ckpt.find_latest(str(run)).endswith("step-00000002")
    assert (run / "backbone.safetensors").exists()


def test_exact_resume_matches_straight_run(toy, tmp_path):
    recipe = str(RECIPES / "paper.yaml")
    straight = toy("paper.yaml", steps=8, **{"train.ckpt_every": 4, "train.keep_last": 5,
                                             "objectives.speckle_gan.params.start_step": 2})
    assert run_recipe(recipe, straight, stream=io.StringIO()) == 0
    run = tmp_path / "run"
    resumed_dir = tmp_path / "resumed"
    half = ckpt.list_checkpoints(str(run))[0]
    assert half.endswith("step-00000004")
    again = [o for o in straight if not o.startswith("run_dir=")] + [f"run_dir={resumed_dir}"]
    assert run_recipe(recipe, again, resume=half, stream=io.StringIO()) == 0
    a, b = metrics(run)[4:], metrics(resumed_dir)
    assert [r["step"] for r in b] == [5, 6, 7, 8]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "loss_mim", "loss_speckle_gan", "loss_self_distillation", "w_lambda"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), key
    wa, _, _ = ckpt.read_checkpoint(ckpt.find_latest(str(run)))
    wb, _, _ = ckpt.read_checkpoint(ckpt.find_latest(str(resumed_dir)))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_existing_checkpoints_need_resume_and_bad_resume_path(toy, tmp_path):
    recipe = str(RECIPES / "quickstart.yaml")
    assert run_recipe(recipe, toy("quickstart.yaml", steps=1), stream=io.StringIO()) == 0
    with pytest.raises(ArlkitError, match="already holds checkpoints"):
        run_recipe(recipe, toy("quickstart.yaml", steps=1), stream=io.StringIO())
    with pytest.raises(ArlkitError, match="not a complete arlkit checkpoint"):
        run_recipe(recipe, toy("quickstart.yaml", steps=2), resume=str(tmp_path),
                   stream=io.StringIO())
    # --resume continues the run as trained: a longer train.steps changes its schedules ...
    with pytest.raises(ConfigError, match="train.steps: 1 → 2"):
        run_recipe(recipe, toy("quickstart.yaml", steps=2), resume="latest",
                   stream=io.StringIO())
    # ... so training longer is a new run directory that starts from the checkpoint
    longer = toy("quickstart.yaml", steps=2, run_dir=tmp_path / "longer")
    assert run_recipe(recipe, longer, resume=ckpt.find_latest(str(tmp_path / "run")),
                      stream=io.StringIO()) == 0
    assert [r["step"] for r in metrics(tmp_path / "longer")] == [2]


class NaNObjective(Objective):
    """Always non-finite: checks the engine's fault handling (and plugin objectives)."""

    def loss(self, step, student):
        return step.student_global(student)[:, 0].sum() * float("nan")


def test_non_finite_steps_are_skipped_then_the_run_stops(toy, tmp_path):
    from arlkit.registry import default_registries

    default_registries.objectives.add("nan_test", NaNObjective, provider="tests")
    try:
        overrides = toy("ablation-mim.yaml", steps=10) + [
            "objectives=[{name: mim}, {name: nan_test}]", "train.max_nonfinite=3"]
        with pytest.raises(TrainingStopped, match="3 consecutive non-finite steps at step 3"):
            run_recipe(str(RECIPES / "ablation-mim.yaml"), overrides, stream=io.StringIO())
    finally:
        default_registries.objectives.remove("nan_test")
    assert ckpt.find_latest(str(tmp_path / "run")) is None  # nothing bad was saved


def test_recipe_errors_come_before_training(tmp_path):
    with pytest.raises(RecipeError) as info:
        run_recipe(str(RECIPES / "quickstart.yaml"),
                   ["objectives.mim.params.mask_ratio=2.0x", f"run_dir={tmp_path}/r"])
    assert "objectives[0].params.mask_ratio" in str(info.value)
    assert not (tmp_path / "r").exists()


def test_export_loads_in_arlkit_and_timm(toy, tmp_path):
    import timm

    import arlkit
    from arlkit.engine.export import export_from_run, read_export

    name = "ablation-mim-acdt.yaml"
    assert run_recipe(str(RECIPES / name), toy(name, steps=2), stream=io.StringIO()) == 0
    run = tmp_path / "run"
    out = tmp_path / "bb.safetensors"
    _, which, step = export_from_run(str(run), str(out))
    assert (which, step) == ("student", 2)  # no teacher in a MIM-only recipe
    model = arlkit.load_backbone(str(out))
    tensors, _, _ = ckpt.read_checkpoint(ckpt.find_latest(str(run)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, tensors[f"student.backbone.{key}"])
    x = torch.rand(2, 1, 32, 32)
    organ = torch.tensor([0, 11])
    with torch.no_grad():
        ref = model.forward_features(x, organ)
    _, config, _ = read_export(str(out))
    arch = config["backbone"]["params"]  # the README's form: every architecture argument
    tm = timm.create_model(f"avit_{arch['size']}_patch16_224", pretrained=True,
                           pretrained_cfg_overlay={"file": str(out)}, **arch).eval()
    with torch.no_grad():
        assert torch.allclose(tm.forward_features(x, organ), ref, atol=1e-6)
    with pytest.raises(ConfigError, match="size='tiny' contradicts the model name"):
        timm.create_model("avit_base_patch16_224", **arch)


def test_resume_reads_only_complete_checkpoints_after_copying(toy, tmp_path):
    name = "quickstart.yaml"
    assert run_recipe(str(RECIPES / name), toy(name, steps=2, **{"train.ckpt_every": 1,
                      "train.keep_last": 3}), stream=io.StringIO()) == 0
    run = tmp_path / "run"
    latest = pathlib.Path(ckpt.find_latest(str(run)))
    # simulate a kill between writing the files and renaming: an incomplete newer directory
    broken = latest.parent / "step-00000003"
    shutil.copytree(latest, broken)
    (broken / ckpt.MARKER).unlink()
    assert pathlib.Path(ckpt.find_latest(str(run))) == latest


def _unreadable_manifest(tmp_path: pathlib.Path, n: int = 8) -> str:
    (tmp_path / "junk.png").write_text("not an image")
    rows = "".join("junk.png,liver\n" for _ in range(n))
    (tmp_path / "m.csv").write_text("path,organ\n" + rows)
    return str(tmp_path / "m.csv")


def test_a_dataset_of_unreadable_files_stops_the_run(toy, tmp_path):
    # the bad-file limit is measured against the dataset's size when it is small
    manifest = _unreadable_manifest(tmp_path)
    overrides = toy("ablation-mim.yaml", steps=2) + [
        f"data.dataset={{name: manifest, params: {{path: {manifest}, size: 48}}}}"]
    with pytest.raises(ArlkitError, match="could not be read, more than the dataset's "
                                          "max_bad_fraction") as info:
        run_recipe(str(RECIPES / "ablation-mim.yaml"), overrides, stream=io.StringIO())
    assert "not an image file" in str(info.value)
    assert not (tmp_path / "run" / "backbone.safetensors").exists()


def test_batches_without_a_readable_image_do_not_end_the_run_short_silently(toy, tmp_path):
    manifest = _unreadable_manifest(tmp_path)
    overrides = toy("ablation-mim.yaml", steps=2) + [
        f"data.dataset={{name: manifest, params: {{path: {manifest}, size: 48, "
        "max_bad_fraction: 1.0}}"]
    with pytest.raises(TrainingStopped, match=r"only 0 of 2 steps ran: 2 step\(s\) had a batch "
                                              r"with no readable image"):
        run_recipe(str(RECIPES / "ablation-mim.yaml"), overrides, stream=io.StringIO())
    assert not (tmp_path / "run" / "backbone.safetensors").exists()  # no untrained export
    assert len((tmp_path / "run" / "bad_files.jsonl").read_text().splitlines()) == 8


def test_plan_names_the_deform_implementation_auto_runs(toy, capsys):
    recipe = str(RECIPES / "quickstart.yaml")
    assert run_recipe(recipe, toy("quickstart.yaml"), dry_run=True) == 0
    assert "deform op auto → numba" in capsys.readouterr().out  # the dev extra has Numba
    mixing = toy("quickstart.yaml") + ["model.backbone.params.channel_mixing=grouped"]
    assert run_recipe(recipe, mixing, dry_run=True) == 0
    assert "deform op auto → reference" in capsys.readouterr().out


def test_a_warmup_as_long_as_the_run_is_said(toy, capsys):
    # quickstart warms up over 20 steps; shortened to 10 it would end at its peak rate
    recipe = str(RECIPES / "quickstart.yaml")
    assert run_recipe(recipe, toy("quickstart.yaml", steps=10), dry_run=True) == 0
    out = capsys.readouterr().out
    assert ("note: optim.warmup_steps=20 with train.steps=10: the learning rate warms up until "
            "the last step (step 9) and ends at its peak") in out
    assert "optim.warmup_steps=1)" in out  # the suggestion: a tenth of the run
    from arlkit.engine.schedules import cosine
    assert cosine(9, 10, 1.0, 0.0, warmup=20) == 1.0  # what the note describes
    # 21 steps: the warm-up of 20 ends at the last step (20) too, so it is said
    assert cosine(20, 21, 1.0, 0.0, warmup=20) == 1.0
    assert run_recipe(recipe, toy("quickstart.yaml", steps=21), dry_run=True) == 0
    assert "train.steps=21: the learning rate warms up until the last step" in capsys.readouterr().out
    assert cosine(21, 22, 1.0, 0.0, warmup=20) == 0.0  # 22 steps: one step of decay, to the end
    assert run_recipe(recipe, toy("quickstart.yaml", steps=22), dry_run=True) == 0
    assert "note:" not in capsys.readouterr().out


def test_min_block_patches_reaches_both_mask_generators(toy):
    from arlkit.engine.build import build_components
    from arlkit.recipe import load_recipe

    recipe = str(RECIPES / "ibot.yaml")  # mim-free: patch_distillation draws its own masks
    overrides = toy("ibot.yaml") + ["objectives.patch_distillation.params.min_block_patches=3"]
    comps = build_components(load_recipe(recipe, overrides), source=recipe)
    gen = {o.name: o for o in comps.objectives}["patch_distillation"].generator
    assert gen.min_block_patches == 3
    recipe = str(RECIPES / "quickstart.yaml")
    comps = build_components(load_recipe(recipe, toy("quickstart.yaml")), source=recipe)
    assert {o.name: o for o in comps.objectives}["mim"].generator.min_block_patches == 4
    with pytest.raises(ConfigError, match=re.escape("min_block_patches must be >= 1, got 0")):
        run_recipe(recipe, toy("quickstart.yaml") + ["objectives.mim.params.min_block_patches=0"],
                   dry_run=True)


@pytest.mark.parametrize(("name", "override", "messages"), [
    ("quickstart.yaml", "objectives.mim.params.mask_ratio=1.5",
     ["mask_ratio must be in (0, 1), got 1.5"]),
    # mae.yaml drops masked tokens; a linear head would see only its mask token there
    ("mae.yaml", "objectives.mim.params.decoder_depth=0",
     ["needs a transformer decoder", "set decoder_depth > 0"]),
])
def test_values_only_a_component_checks_name_the_recipe_path(toy, tmp_path, name, override,
                                                             messages):
    recipe = str(RECIPES / name)
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, toy(name) + [override], dry_run=True)
    assert str(info.value).startswith(f"{recipe}: objectives[0].params (mim): ")
    for message in messages:
        assert message in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("adaptive", "speckl_gan", "balancer.params.adaptive: no objective named 'speckl_gan'; "
                               "did you mean 'speckle_gan'?"),
    ("reference", "mimm", "balancer.params.reference: no objective named 'mimm'"),
])
def test_balancer_names_must_be_objectives(toy, key, value, message):
    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_recipe(recipe, toy("quickstart.yaml") + [f"balancer.params.{key}={value}"],
                   dry_run=True)


def test_a_weight_the_balancer_cancels_is_refused(toy):
    # gradnorm_ratio rescales speckle_gan's gradient to mim's: a weight of 0.5 would do nothing
    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            "objectives[1].weight: 0.5 has no effect on 'speckle_gan': balancer 'gradnorm_ratio' "
            "rescales its gradient")) as info:
        run_recipe(recipe, toy("quickstart.yaml") + ["objectives.speckle_gan.weight=0.5"],
                   dry_run=True)
    assert "set balancer.params.scale" in str(info.value)
    # what works: the balancer's scale, a weight of 0 (off), and weights on the other losses
    for override in ("balancer.params.scale=0.5", "objectives.speckle_gan.weight=0",
                     "objectives.mim.weight=2"):
        assert run_recipe(recipe, toy("quickstart.yaml") + [override], dry_run=True) == 0


def test_bad_resume_path_leaves_the_run_dir_alone(toy, tmp_path):
    with pytest.raises(ArlkitError, match="--resume .*not a complete arlkit checkpoint"):
        run_recipe(str(RECIPES / "quickstart.yaml"), toy("quickstart.yaml"),
                   resume=str(tmp_path / "nope"), stream=io.StringIO())
    assert not (tmp_path / "run").exists()


def test_bad_file_counts_survive_resume(toy, tmp_path, interrupt_at):
    # a quarter of the rows are junk; the fraction after --resume counts the earlier run too
    data = partly_unreadable_dataset(tmp_path, 4)

    def train(stop_at: int | None, resume: str | None) -> dict:
        interrupt_at(stop_at)  # Ctrl-C during that step
        overrides = toy("ablation-mim.yaml", steps=6) + [
            data, "data.batch_size=4", "train.ckpt_every=1"]
        try:
            run_recipe(str(RECIPES / "ablation-mim.yaml"), overrides, resume=resume,
                       stream=io.StringIO())
        except TrainingStopped:  # steps whose batch held only junk end the run short
            pass
        _, state, _ = ckpt.read_checkpoint(ckpt.find_latest(str(tmp_path / "run")))
        return state

    first = train(3, None)
    assert first["step"] == 3
    assert first["bad_files"]["seen"] == 4 * first["step"]
    n_bad = len(first["bad_files"]["bad"])
    assert n_bad > 0
    second = train(None, "latest")
    assert second["step"] > first["step"]
    assert second["bad_files"]["seen"] == 4 * second["step"]  # not restarted at zero
    assert second["bad_files"]["bad"][:n_bad] == first["bad_files"]["bad"]
    lines = (tmp_path / "run" / "bad_files.jsonl").read_text().splitlines()
    assert len(lines) == len(second["bad_files"]["bad"])  # nothing listed twice


def test_mim_target_clean_needs_clean_views_and_reconstructs_them(toy, tmp_path):
    """``mim`` with ``target: clean`` is checked before training (it needs the views'
    ``clean_global``) and its target is the un-augmented crop, not the input view."""
    from arlkit.engine.build import build_components
    from arlkit.engine.step import Step
    from arlkit.losses import mim_loss, patchify

    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, toy("quickstart.yaml", **{"objectives.mim.params.target": "clean"}),
                   stream=io.StringIO())
    assert "objectives[0].params (mim)" in str(info.value)
    assert "data.views.params.clean_global: true" in str(info.value)
    assert not (tmp_path / "run").exists()

    overrides = toy("quickstart.yaml", **{"objectives.mim.params.target": "clean",
                                          "data.views.params.clean_global": "true"})
    assert run_recipe(recipe, overrides, stream=io.StringIO()) == 0
    assert all(r["loss_mim"] > 0 for r in metrics(tmp_path / "run"))

    c = build_components(load_recipe(recipe, overrides))
    mim = next(o for o in c.objectives if o.name == "mim")
    g = torch.Generator().manual_seed(0)
    views, clean = torch.rand(4, 1, 32, 32, generator=g), torch.rand(4, 1, 32, 32, generator=g)
    mask = mim.make_mask(4, g)
    step = Step(0, 0, views, None, torch.zeros(2, dtype=torch.long), mask, c.context.grid, 2, 0,
                global_clean=clean)
    loss = mim.loss(step, c.student)
    pred, target = step.cache["mim"]
    assert torch.equal(target, patchify(clean, 8))
    torch.testing.assert_close(loss, mim_loss(pred, patchify(clean, 8), mask))
    assert not torch.allclose(loss, mim_loss(pred, patchify(views, 8), mask))


def _with_objective(tmp_path: pathlib.Path, base: str, spec: dict) -> str:
    """``base`` (a shipped recipe) with the objective ``spec`` appended; returns its path."""
    import yaml

    recipe = yaml.safe_load((RECIPES / base).read_text())
    recipe["objectives"].append(spec)
    path = tmp_path / f"{spec['name']}-{base}"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def _with_patch_distillation(tmp_path: pathlib.Path, base: str) -> str:
    """``base`` with iBOT's patch objective appended, at toy size."""
    return _with_objective(tmp_path, base, {"name": "patch_distillation", "params": {
        "out_dim": 48, "hidden_dim": 32, "bottleneck_dim": 16, "mask_ratio": 0.25,
        "mask_probability": 0.5}})  # fmt: skip


@pytest.mark.parametrize("base", ["quickstart-distill.yaml", "quickstart.yaml"])
def test_patch_distillation_trains_and_shares_mask_and_teacher_pass(base, toy, tmp_path):
    """``patch_distillation`` (iBOT): trains beside the other objectives; draws the mask
    itself unless ``mim`` is in the recipe (then both read mim's); its loss is the patch
    loss at the masked patches; the teacher backbone runs once for both distillations."""
    from arlkit.engine.build import build_components
    from arlkit.engine.step import Step
    from arlkit.losses import PatchDistillationLoss

    recipe = _with_patch_distillation(tmp_path, base)
    assert run_recipe(recipe, toy(base), stream=io.StringIO()) == 0
    rows = metrics(tmp_path / "run")
    assert all(r["loss_patch_distillation"] > 0 for r in rows)

    c = build_components(load_recipe(recipe, toy(base)))
    patch = next(o for o in c.objectives if o.name == "patch_distillation")
    n = c.context.grid[0] * c.context.grid[1]
    g = torch.Generator().manual_seed(0)
    if base == "quickstart.yaml":
        assert not patch.draws_mask and patch.make_mask(8, g) is None
        mask = next(o for o in c.objectives if o.name == "mim").make_mask(8, g)
    else:
        assert patch.draws_mask
        many = patch.make_mask(400, g)
        counts = many.sum(1)
        assert set(counts.tolist()) == {0, round(0.25 * n)}  # whole views or the ratio
        assert 0.4 < float((counts == 0).float().mean()) < 0.6  # mask_probability 0.5
        mask = patch.make_mask(8, g)
        mask[0, 0] = True  # at least one masked patch to compare
    views = torch.rand(8, 1, 32, 32, generator=g)
    step = Step(0, 0, views, None, torch.zeros(4, dtype=torch.long), mask, c.context.grid, 2, 0)
    calls = []
    forward = c.teacher.backbone.forward_features
    c.teacher.backbone.forward_features = lambda *a, **k: calls.append(1) or forward(*a, **k)
    with torch.no_grad():
        for obj in c.objectives:
            obj.teacher_forward(step, c.teacher)
    assert len(calls) == 1
    teacher_out = step.teacher["patch_distillation"]
    assert teacher_out.shape == (8, n, 48)
    expected_fn = PatchDistillationLoss(out_dim=48)
    expected_fn.center.copy_(patch.aux["criterion"].center)
    tokens = c.student.backbone.forward_features(views, step.organ_for(2), mask=mask)
    expected = expected_fn(c.student.heads["patch_distillation"]["head"](tokens[:, 1:]),
                           teacher_out, mask, 0)
    torch.testing.assert_close(patch.loss(step, c.student), expected)


def test_patch_distillation_rejects_a_sparse_encoder_and_bad_probability():
    from arlkit.engine.builtin_objectives import PatchDistillationObjective
    from arlkit.engine.objectives import ObjectiveContext

    def context(sparse: bool) -> ObjectiveContext:
        return ObjectiveContext(32, 8, 1, 1, sparse, (4, 4), 2, 0, 10, 10,
                                ("self_distillation", "patch_distillation"))

    with pytest.raises(ConfigError, match="sparse"):
        PatchDistillationObjective(context(True))
    with pytest.raises(ConfigError, match="mask_probability"):
        PatchDistillationObjective(context(False), mask_probability=0.0)


def test_koleo_trains_on_the_students_class_tokens(toy, tmp_path):
    """``koleo`` (DINOv2's regulariser, weight 0.1): trains beside self-distillation; its
    loss is KoLeo of the student's class tokens of each global view."""
    from arlkit.engine.build import build_components
    from arlkit.engine.step import Step
    from arlkit.losses import koleo_loss

    base = "quickstart-distill.yaml"
    recipe = _with_objective(tmp_path, base, {"name": "koleo", "weight": 0.1, "params": {}})
    assert run_recipe(recipe, toy(base), stream=io.StringIO()) == 0
    rows = metrics(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["loss_koleo"])) for r in rows)
    for r in rows:  # the recipe weight scales it in the total
        expected_total = r["loss_self_distillation"] + 0.1 * r["loss_koleo"]
        assert r["loss"] == pytest.approx(expected_total, rel=1e-4, abs=1e-3)

    c = build_components(load_recipe(recipe, toy(base)))
    koleo = next(o for o in c.objectives if o.name == "koleo")
    g = torch.Generator().manual_seed(0)
    views = torch.rand(8, 1, 32, 32, generator=g)
    step = Step(0, 0, views, None, torch.zeros(4, dtype=torch.long), None, c.context.grid, 2, 0)
    cls = c.student.backbone.forward_features(views, step.organ_for(2))[:, 0]
    expected = (koleo_loss(cls[:4]) + koleo_loss(cls[4:])) / 2
    torch.testing.assert_close(koleo.loss(step, c.student), expected)
    lonely = Step(0, 0, views[:2], None, torch.zeros(1, dtype=torch.long), None,
                  c.context.grid, 2, 0)
    with pytest.raises(ConfigError, match="raise data.batch_size"):
        koleo.loss(lonely, c.student)


def test_accumulated_micro_batches_move_center_and_discriminator_once_per_step(toy, tmp_path):
    """``optim.accum_steps`` micro-batches act as one batch of them all for the state that
    belongs to the optimizer step: the distillation center after a step is the one a single
    batch gives, and the discriminator's optimizer steps once per training step."""

    def train(accum: int, steps: int) -> tuple[dict, dict]:
        overrides = toy("paper.yaml", steps=steps) + [
            f"run_dir={tmp_path / f'a{accum}-{steps}'}", "train.ckpt_every=1",
            f"optim.accum_steps={accum}", "objectives.speckle_gan.params.start_step=0"]
        assert run_recipe(str(RECIPES / "paper.yaml"), overrides, stream=io.StringIO()) == 0
        tensors, state, _ = ckpt.read_checkpoint(ckpt.find_latest(str(tmp_path / f"a{accum}-{steps}")))
        return tensors, state

    center = "aux.self_distillation.aux.criterion.center"
    (one, _), (two, _) = train(1, 1), train(2, 1)  # the teacher is still the initial one
    torch.testing.assert_close(two[center], one[center], rtol=1e-4, atol=1e-6)
    _, state = train(2, 3)
    disc_steps = {float(s["step"]) for s in state["objectives"]["speckle_gan"]["optimizer"]["state"].values()}
    assert disc_steps == {3.0}  # not 6: one discriminator step per training step


class BatchNormHeadObjective(Objective):
    """A plugin objective with an EMA teacher whose head has batch norm."""

    needs_teacher = True

    def build_heads(self):
        return torch.nn.ModuleDict({"head": torch.nn.Sequential(
            torch.nn.Linear(self.context.embed_dim, 8), torch.nn.BatchNorm1d(8))})

    def teacher_forward(self, step, teacher):
        step.teacher[self.name] = teacher.heads[self.name]["head"](step.teacher_global(teacher)[:, 0])

    def loss(self, step, student):
        out = student.heads[self.name]["head"](step.student_global(student)[:, 0])
        return (out - step.teacher[self.name]).square().mean()


def test_the_teacher_is_deterministic_and_follows_the_students_running_statistics(toy, tmp_path):
    from arlkit.engine.build import build_components
    from arlkit.registry import default_registries

    # DINO builds its teacher without drop path: two passes over the same views agree
    recipe = load_recipe(str(RECIPES / "paper.yaml"), toy("paper.yaml"))
    comps = build_components(recipe)
    assert recipe.model.backbone.params["drop_path_rate"] > 0 and comps.student.training
    assert not any(m.training for m in comps.teacher.modules())
    views = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        first, second = (comps.teacher.backbone.forward_features(views) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    default_registries.objectives.add("bn_head_test", BatchNormHeadObjective, provider="tests")
    try:
        overrides = toy("dino.yaml", steps=2) + [
            "objectives=[{name: self_distillation}, {name: bn_head_test}]", "train.ckpt_every=1"]
        assert run_recipe(str(RECIPES / "dino.yaml"), overrides, stream=io.StringIO()) == 0
    finally:
        default_registries.objectives.remove("bn_head_test")
    tensors, _, _ = ckpt.read_checkpoint(ckpt.find_latest(str(tmp_path / "run")))
    key = "heads.bn_head_test.head.1."
    assert int(tensors[f"student.{key}num_batches_tracked"]) == 2
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(tensors[f"teacher.{key}{name}"], tensors[f"student.{key}{name}"],
                                   rtol=0, atol=0)


def test_speckle_gan_lr_must_be_positive(toy):
    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            "objectives[1].params (speckle_gan): lr must be a positive number, got -1.0")):
        run_recipe(recipe, toy("quickstart.yaml") + ["objectives.speckle_gan.params.lr=-1"],
                   dry_run=True)


def test_dry_run_checks_the_run_directory_and_resume(toy, tmp_path):
    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ArlkitError, match="--resume: no complete checkpoint in"):
        run_recipe(recipe, toy("quickstart.yaml"), resume="latest", dry_run=True)
    assert not (tmp_path / "run").exists()


def test_a_batch_layout_error_leaves_no_run_directory(toy, tmp_path):
    recipe = str(RECIPES / "quickstart.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            f"{recipe}: the dataset has 2 samples, fewer than one batch (data.batch_size=4); "
            "lower data.batch_size")):
        run_recipe(recipe, toy("quickstart.yaml") + ["data.dataset.params.length=2"],
                   stream=io.StringIO())
    assert not (tmp_path / "run").exists()
