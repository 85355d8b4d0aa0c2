from __future__ import annotations

from typing import Literal

import pytest
import yaml

from arlkit.recipe import RecipeError, apply_overrides, dump_recipe, load_recipe, validate_recipe
from arlkit.recipe.load import parse_override
from arlkit.registry import Registries


class Comp:
    """Stand-in component."""

    def __init__(self, temp: float = 0.1, mode: Literal["a", "b"] = "a") -> None:
        self.temp, self.mode = temp, mode


@pytest.fixture()
def regs() -> Registries:
    r = Registries()
    for kind, name in [
        ("objectives", "mim"),
        ("objectives", "speckle_gan"),
        ("conditioners", "onehot"),
        ("backbones", "avit"),
        ("deform_ops", "reference"),
        ("offset_nets", "dwconv"),
        ("balancers", "fixed"),
        ("balancers", "gradnorm_ratio"),
        ("datasets", "synthetic"),
        ("transforms", "multicrop"),
    ]:
        r[kind].add(name, Comp)
    return r


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_valid_recipe_fills_component_defaults(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim", "params": {"temp": 0.5}}]})
    recipe = load_recipe(path, registries=regs)
    assert recipe.name == "r"
    assert recipe.objectives[0].params == {"temp": 0.5, "mode": "a"}
    assert recipe.model.conditioner.params == {"temp": 0.1, "mode": "a"}
    assert recipe.resolved_run_dir() == "runs/r"


def test_every_error_is_reported_together_with_paths_and_suggestions(tmp_path, regs):
    path = write(
        tmp_path,
        {
            "objectives": [{"name": "mim", "params": {"tmp": 1}}, {"name": "speckle_gn"}],
            "optim": {"lrr": 1e-3, "lr": "fast"},
            "balancer": {"name": "gradnorm_ratio", "params": {"mode": "c"}},
            "trian": {},
        },
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    assert str(info.value) == "\n".join(
        [
            f"recipe {path} is invalid (6 problems):",
            f"  {path}: objectives[0].params.tmp: unknown key 'tmp'; did you mean 'temp'? "
            "(allowed: temp, mode)",
            f"  {path}: objectives[1].name: unknown objective 'speckle_gn'; did you mean "
            "'speckle_gan'? (known: mim, speckle_gan)",
            f"  {path}: balancer.params.mode: Input should be 'a' or 'b' (got 'c')",
            f"  {path}: optim.lr: Input should be a valid number, unable to parse string as a "
            "number (got 'fast')",
            f"  {path}: optim.lrr: unknown key 'lrr'; did you mean 'lr'? (allowed: lr, min_lr, "
            "warmup_steps, weight_decay, weight_decay_end, betas, grad_clip, grad_clip_mode, "
            "accum_steps)",
            f"  {path}: trian: unknown key 'trian'; did you mean 'train'? (allowed: name, seed, "
            "run_dir, taxonomy, model, objectives, balancer, data, optim, teacher, train)",
        ]
    )
    assert info.value.exit_code == 2


def test_missing_objectives_and_taxonomy_errors(tmp_path, regs):
    path = write(tmp_path, {"taxonomy": {"organs": ["liver", "unknown"]}})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    paths = [i.path for i in info.value.issues]
    assert paths == ["taxonomy", "objectives"]
    assert "'unknown' is implicit" in info.value.issues[0].message


def test_duplicate_objectives_rejected(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}, {"name": "mim"}]})
    with pytest.raises(RecipeError, match="objective 'mim' is listed twice"):
        load_recipe(path, registries=regs)


def test_optim_disc_lr_points_at_the_setting_that_is_read(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}], "optim": {"disc_lr": 1e-3}})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    [issue] = info.value.issues
    assert issue.path == "optim"
    assert "the discriminator's learning rate is objectives.speckle_gan.params.lr" in issue.message


def test_yaml_syntax_error_names_line(tmp_path, regs):
    path = write(tmp_path, "objectives:\n  - name: mim\n  bad: [\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    assert info.value.issues[0].path.startswith("line ")
    assert "invalid YAML" in info.value.issues[0].message


def test_non_mapping_and_missing_file(tmp_path, regs):
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping, got list"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"), registries=regs)
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(str(tmp_path / "nope.yaml"), registries=regs)


def test_unsafe_yaml_tags_are_refused(tmp_path, regs):
    path = write(tmp_path, "objectives: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(path, registries=regs)


def test_parse_override_types():
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("train.compile=true") == (["train", "compile"], True)
    assert parse_override("objectives[1].weight=2") == (["objectives", 1, "weight"], 2)
    assert parse_override("a.0.b=[1, 2]") == (["a", 0, "b"], [1, 2])
    assert parse_override("name=") == (["name"], "")
    with pytest.raises(ValueError):
        parse_override("no_equals_sign")


def test_apply_overrides_by_index_name_and_new_keys():
    data = {"objectives": [{"name": "mim"}, {"name": "speckle_gan", "weight": 1}]}
    issues = apply_overrides(
        data,
        ["objectives.speckle_gan.weight=0.5", "objectives[0].params.temp=2", "train.steps=7"],
    )
    assert issues == []
    assert data == {
        "objectives": [{"name": "mim", "params": {"temp": 2}}, {"name": "speckle_gan", "weight": 0.5}],
        "train": {"steps": 7},
    }
    issues = apply_overrides(data, ["objectives.dino.weight=1", "objectives[5].x=1"])
    assert [i.message for i in issues] == [
        "objectives.dino: no list element named 'dino' (names: mim, speckle_gan)",
        "objectives[5]: index 5 is out of range (list has 2)",
    ]


def test_override_errors_are_reported_with_validation_errors(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}]})
    recipe = load_recipe(path, ["train.steps=5", "seed=3"], registries=regs)
    assert (recipe.train.steps, recipe.seed) == (5, 3)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.stepz=5", "oops"], registries=regs)
    assert [i.path for i in info.value.issues] == ["override 'oops'", "train.stepz"]


def test_dump_roundtrip_is_stable(tmp_path, regs):
    recipe = load_recipe(write(tmp_path, {"objectives": [{"name": "mim"}]}), registries=regs)
    text = dump_recipe(recipe)
    again = validate_recipe(yaml.safe_load(text), "dumped", regs)
    assert dump_recipe(again) == text


def test_fsspec_memory_recipe(regs):
    import fsspec

    with fsspec.open("memory://recipes/m.yaml", "w") as handle:
        handle.write("objectives: [{name: mim}]\n")
    assert load_recipe("memory://recipes/m.yaml", registries=regs).name == "m"


def test_disc_lr_is_reported_beside_the_other_optim_problems(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}],
                            "optim": {"disc_lr": 1e-3, "betas": 0.9, "grad_clip_mode": "perparam"}})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    paths = [issue.path for issue in info.value.issues]
    assert paths == ["optim", "optim.betas", "optim.grad_clip_mode"]


def test_betas_must_lie_in_zero_one(tmp_path, regs):
    # torch's AdamW raised a bare ValueError for these, after the run directory was created
    path = write(tmp_path, {"objectives": [{"name": "mim"}], "optim": {"betas": [0.9, 2]}})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    [issue] = info.value.issues
    assert issue.path == "optim.betas[1]" and "less than 1" in issue.message


def test_accum_steps_must_divide_the_batch(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}]})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["data.batch_size=16", "optim.accum_steps=3"], registries=regs)
    [issue] = info.value.issues
    assert "optim.accum_steps=3 does not divide data.batch_size=16" in issue.message
    assert "choose a divisor of 16" in issue.message
    assert load_recipe(path, ["data.batch_size=16", "optim.accum_steps=4"], registries=regs)


def test_a_recipe_that_is_a_folder_or_binary_says_so(tmp_path, regs):
    with pytest.raises(RecipeError, match="is a folder; pass a recipe YAML file"):
        load_recipe(str(tmp_path), registries=regs)
    binary = tmp_path / "r.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(RecipeError, match=r"not a text file \(.*\); pass a recipe YAML file"):
        load_recipe(str(binary), registries=regs)


def test_settings_must_be_finite(tmp_path, regs):
    path = write(tmp_path, {"objectives": [{"name": "mim"}],
                            "optim": {"lr": float("inf"), "weight_decay": float("nan")}})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registries=regs)
    assert {(i.path, "finite number" in i.message) for i in info.value.issues} == {
        ("optim.lr", True), ("optim.weight_decay", True)}
