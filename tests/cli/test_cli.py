"""The command line: ``arlkit.cli.main`` in this process, and the installed entry point in
subprocesses where a fresh process is the point (the console script itself, plugin
discovery from the environment). In-process calls cost milliseconds where each subprocess
pays ~5 s of ``import torch``/``timm``; an exception escaping ``main`` fails the test, which
is stricter than looking for ``Traceback`` on a subprocess's stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ARLKIT = shutil.which("arlkit") or os.path.join(os.path.dirname(sys.executable), "arlkit")


def run_process(
    *args: str, env: dict[str, str] | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """The installed ``arlkit`` console script in a fresh process."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [ARLKIT, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )




def test_console_script_version_and_help():
    out = run_process("--version")
    assert out.returncode == 0 and out.stdout.startswith("arlkit ")
    out = run_process()
    assert out.returncode == 2 and "validate" in out.stdout


def test_validate_reports_all_errors_without_traceback(tmp_path, run):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("objectives: [{name: no_such_objective}]\noptim: {lrr: 1}\n")
    out = run("validate", str(recipe), "train.steps=abc")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"error: recipe {recipe} is invalid (3 problems):"
    assert f"{recipe}: objectives[0].name: unknown objective 'no_such_objective'" in lines[1]
    assert f"{recipe}: optim.lrr: unknown key 'lrr'; did you mean 'lr'?" in out.stderr
    assert f"{recipe}: train.steps: Input should be a valid integer" in out.stderr


def test_validate_names_the_setting_of_a_missing_manifest(tmp_path, run):
    recipe = str(pathlib.Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")
    missing = tmp_path / "nowhere.csv"
    out = run("validate", recipe, f"data.dataset={{name: manifest, params: {{path: {missing}}}}}")
    assert out.returncode == 2
    assert f"{recipe}: data.dataset.params: data path '{missing}' does not exist" in out.stderr


def test_validate_missing_file_is_exit_2(tmp_path, run):
    out = run("validate", str(tmp_path / "none.yaml"))
    assert out.returncode == 2 and "file not found" in out.stderr


def test_argparse_usage_error_is_exit_2(run):
    out = run("list", "--no-such-flag")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_list_unknown_kind_suggests(run):
    out = run("list", "conditionerz")
    assert out.returncode == 2
    assert "did you mean 'conditioners'?" in out.stderr


def test_schema_is_json_schema(tmp_path, run):
    out = run("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert {"objectives", "model", "data", "optim", "train"} <= set(schema["properties"])
    target = tmp_path / "s.json"
    assert run("schema", "--out", str(target)).returncode == 0
    assert json.loads(target.read_text()) == schema


@pytest.fixture()
def broken_plugin_path(tmp_path):
    """A distribution whose ``arlkit`` entry point raises on import."""
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    dist = tmp_path / "brokenplug-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[arlkit]\nbroken = broken_mod\n")
    return str(tmp_path)


def test_plugin_failing_at_import_is_reported_and_can_be_disabled(broken_plugin_path):
    env = {"PYTHONPATH": broken_plugin_path}
    out = run_process("plugins", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["distribution"] == "brokenplug"
    assert "boom at import" in rows["broken"]["error"]
    assert "plugin 'broken' (distribution brokenplug)" in out.stderr  # the warning
    assert rows["arlkit.losses.plugin"]["status"] == "loaded"  # the others still load
    out = run_process("plugins", "--json", env={**env, "ARLKIT_DISABLE_PLUGINS": "broken"})
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["broken"]["status"] == "disabled" and "boom" not in out.stderr
    out = run_process("plugins", "--json", env={**env, "ARLKIT_DISABLE_PLUGINS": "all"})
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["broken"]["status"] == "disabled" and rows["probe"]["status"] == "disabled"


def test_probe_plugin_is_discovered_and_usable_in_a_recipe(tmp_path, run):
    out = run_process("list", "conditioners", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["probe"]["provider"] == "probe"
    assert "max_depth_cm" in rows["probe"]["params"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent(
            """
            model:
              conditioner: {name: probe, params: {max_depth_cm: -1, probez: 1}}
            objectives: [{name: nope}]
            """
        )
    )
    out = run("validate", str(recipe))
    assert out.returncode == 2
    assert "model.conditioner.params.probez: unknown key 'probez'; did you mean 'probes'?" in (
        out.stderr
    )


def test_overrides_may_follow_options(tmp_path, run):
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart.yaml")
    out = run("validate", recipe, "--show", "train.steps=7", "optim.lr=0.5")
    assert out.returncode == 0, out.stderr
    assert "steps: 7" in out.stdout and "lr: 0.5" in out.stdout
    out = run("run", recipe, "--dry-run", f"run_dir={tmp_path / 'r'}", "optim.lrr=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "optim.lrr: unknown key 'lrr'; did you mean 'lr'?" in out.stderr
    out = run("validate", recipe, "--show", "--no-such-flag")  # options are still checked
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr


def test_unwritable_output_path_is_an_error_not_a_traceback(tmp_path, run):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run("schema", "--out", str(blocker / "schema.json"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {blocker / 'schema.json'}: Not a directory")


def test_viz_offsets_bad_inputs_are_named(tmp_path, run):
    pytest.importorskip("matplotlib")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    out = run("viz", "offsets", str(junk), "--out", str(tmp_path / "o.png"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"'{junk}' is not a torch checkpoint" in out.stderr
    tiny = ["--size", "tiny", "--depth", "2", "--img-size", "64", "--out", str(tmp_path / "o.png")]
    out = run("viz", "offsets", "random", "--image", str(junk), *tiny)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{junk}: cannot decode image: ValueError: not an image file" in out.stderr
    out = run("viz", "offsets", "random", "--block", "5", *tiny)
    assert out.returncode == 2 and "--block 5 is out of range; the model has 2 blocks" in out.stderr
    out = run("viz", "offsets", "random", "--group", "99", *tiny)
    assert out.returncode == 2 and "--group 99 is out of range" in out.stderr
    out = run("viz", "offsets", "random", *tiny)
    assert out.returncode == 0 and (tmp_path / "o.png").stat().st_size > 0


def test_validate_builds_components_unless_schema_only(tmp_path, run):
    recipe = tmp_path / "r.yaml"
    text = open("recipes/quickstart.yaml").read().replace("mask_ratio: 0.5", "mask_ratio: 1.5")
    assert "mask_ratio: 1.5" in text
    recipe.write_text(text)
    out = run("validate", str(recipe))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{recipe}: objectives[0].params (mim):" in out.stderr and "mask_ratio" in out.stderr
    out = run("validate", str(recipe), "--schema-only")  # types and names only
    assert out.returncode == 0 and "valid" in out.stdout


def test_list_accepts_the_singular_kind(run):
    out = run("list", "conditioner", "--json")
    assert out.returncode == 0
    assert {row["kind"] for row in json.loads(out.stdout)} == {"conditioners"}


def test_resume_does_not_swallow_an_override(tmp_path, run):
    # `--resume a.b=1` is `--resume` (latest) plus the override, not a checkpoint path
    out = run("run", "recipes/quickstart.yaml", "--resume", f"run_dir={tmp_path / 'r'}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no complete checkpoint" in out.stderr and str(tmp_path / "r") in out.stderr


def test_export_of_a_missing_run_dir(tmp_path, run):
    out = run("export", str(tmp_path / "none"), "--out", str(tmp_path / "b.safetensors"))
    assert out.returncode == 1 and "no such run directory" in out.stderr


def test_a_malformed_override_is_named_before_or_after_the_options(run):
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart.yaml")
    for args in (["--show", "data.batch_size"], ["data.batch_size", "--show"],
                 ["--schema-only", "train.steps=3", "data.batch_size", "--show"]):
        out = run("validate", recipe, *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, args
        assert "override 'data.batch_size': expected KEY.PATH=VALUE" in out.stderr, args
        assert "unrecognized arguments" not in out.stderr and "usage:" not in out.stderr, args
    out = run("run", recipe, "--dry-run", "optim.lr")
    assert out.returncode == 2 and "override 'optim.lr': expected KEY.PATH=VALUE" in out.stderr


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_an_empty_recipe_says_the_file_is_empty(tmp_path, run, text):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    out = run("validate", str(recipe))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{recipe}: the file is empty (or only comments)" in out.stderr
    assert "List should have at least 1 item" not in out.stderr


def test_export_does_not_write_over_a_file_that_is_not_an_export(tmp_path, run):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\n")
    out = run("export", str(run_dir), "--out", str(recipe))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--out {recipe}: the file exists and is not an arlkit backbone export" in out.stderr
    assert recipe.read_text() == "name: mine\n"
    out = run("export", str(run_dir), "--out", str(tmp_path))
    assert out.returncode == 2 and f"--out {tmp_path}: is a folder" in out.stderr


def test_export_of_a_checkpoint_of_another_architecture(tmp_path, run):
    import torch

    from arlkit.engine import checkpoint as ckpt
    from arlkit.engine.build import build_components
    from arlkit.recipe import dump_recipe, load_recipe

    small = ["model.backbone.params.depth=1", "model.backbone.params.embed_dim=32",
             "model.backbone.params.num_heads=2"]
    recipe = load_recipe("recipes/quickstart.yaml", small)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
    backbone = build_components(recipe).student.backbone
    tensors = {f"teacher.backbone.{k}": torch.zeros(v.shape[0] + 1, *v.shape[1:])
               for k, v in backbone.state_dict().items() if v.dim()}
    other = ckpt.write_checkpoint(str(tmp_path / "other"), 3, tensors, {"step": 3})
    out = run("export", str(run_dir), "--out", str(tmp_path / "b.safetensors"),
              "--checkpoint", other)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{other}: the checkpoint's teacher backbone does not fit the model of" in out.stderr
    assert not (tmp_path / "b.safetensors").exists()


def test_data_show_and_synth_do_not_write_over_a_file(tmp_path, run):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\n")
    out = run("data", "show", "--n", "1", "--size", "32", "--out", str(recipe))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--out {recipe} exists and is not a PNG" in out.stderr
    out = run("data", "synth", "--n", "1", "--size", "32", "--out", str(recipe))
    assert out.returncode == 2 and f"--out {recipe} is a file; pass a folder" in out.stderr
    assert recipe.read_text() == "name: mine\n"
    out = run("data", "show", "--n", "1", "--size", "32", "--out", str(tmp_path / "[a].png"))
    assert out.returncode == 0 and f"wrote {tmp_path / '[a].png'}" in out.stdout
