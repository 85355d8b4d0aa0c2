"""``--resume`` continues the run its checkpoints come from, or refuses before writing."""

from __future__ import annotations

import io
import json
import pathlib
import re
import shlex
import shutil

import pytest
from toy_recipes import RECIPES

from arlkit.cli import main
from arlkit.engine import checkpoint as ckpt
from arlkit.engine.resume import resume_command
from arlkit.engine.run import run_recipe
from arlkit.errors import ArlkitError, ConfigError

RECIPE = str(RECIPES / "quickstart.yaml")


def metrics(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(run_dir: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture()
def trained(toy, tmp_path):
    """A finished 2-step toy run (a checkpoint per step) and its overrides."""
    overrides = toy("quickstart.yaml", steps=2, **{"train.ckpt_every": 1, "train.keep_last": 3})
    assert run_recipe(RECIPE, overrides, stream=io.StringIO()) == 0
    return tmp_path / "run", overrides


def test_resume_with_another_recipe_is_refused_before_anything_is_written(trained):
    run, overrides = trained
    before = snapshot(run)
    with pytest.raises(ConfigError) as info:  # not a traceback from load_state_dict
        run_recipe(RECIPE, overrides + ["model.backbone.params.depth=1"], resume="latest",
                   stream=io.StringIO())
    text = str(info.value)
    assert f"differs from {run}/recipe.resolved.yaml" in text
    assert "  model.backbone.params.depth: 2 → 1" in text
    assert resume_command(str(run)) in text  # what to do instead
    assert "its model does not fit these checkpoints" in text
    assert snapshot(run) == before

    with pytest.raises(ConfigError) as info:
        run_recipe(RECIPE, overrides + ["train.steps=3", "data.batch_size=8", "optim.lr=1",
                                        "seed=5"], resume="latest", stream=io.StringIO())
    text = str(info.value)
    for line in ("seed: 0 → 5", "data.batch_size: 4 → 8", "optim.lr: 0.001 → 1.0",
                 "train.steps: 2 → 3"):
        assert f"\n  {line}\n" in text, line
    assert "in 4 settings" in text and "schedules" in text  # why train.steps counts too
    # a new run directory from this checkpoint is the way to train with the new values
    assert re.search(r"run_dir=NEW_DIR --resume \S+/checkpoints/step-00000002$", text)
    assert snapshot(run) == before

    with pytest.raises(ConfigError, match=r"\n  \.\.\. and \d+ more\n"):  # a capped list
        run_recipe(RECIPE, overrides + ["objectives=[{name: mim}]", "balancer={name: fixed}"],
                   resume="latest", stream=io.StringIO())
    assert snapshot(run) == before

    with pytest.raises(ArlkitError, match=re.escape(f"continue it with '{resume_command(str(run))}'")):
        run_recipe(RECIPE, overrides, stream=io.StringIO())  # no --resume
    assert snapshot(run) == before


def test_resume_with_the_runs_own_recipe_is_exact_and_may_change_bookkeeping(trained):
    run, _ = trained
    straight = metrics(run)
    shutil.rmtree(run / "checkpoints" / "step-00000002")  # as if stopped after step 1
    first_env = json.loads((run / "environment.json").read_text())
    free = ["train.log_every=2", "train.keep_last=5", "data.num_workers=0", "train.export=false",
            "name=renamed"]
    assert run_recipe(str(run / "recipe.resolved.yaml"), [f"run_dir={run}", *free],
                      resume="latest", stream=io.StringIO()) == 0
    # one record per step: the resumed run's step 2 replaces the one logged before the resume
    assert [r["step"] for r in metrics(run)] == [1, 2]
    assert metrics(run)[0] == straight[0]
    assert metrics(run)[1]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-6)
    env = json.loads((run / "environment.json").read_text())
    assert env["resumed_from"].endswith("step-00000001")
    assert env["earlier"] == [first_env]  # the first session's environment is kept


def test_a_checkpoint_that_does_not_fit_is_named_and_nothing_is_written(trained, tmp_path):
    run, overrides = trained
    (run / "recipe.resolved.yaml").unlink()  # nothing to compare with: the weights tell
    before = snapshot(run)
    latest = ckpt.find_latest(str(run))
    with pytest.raises(ConfigError) as info:
        run_recipe(RECIPE, overrides + ["model.backbone.params.depth=1"], resume="latest",
                   stream=io.StringIO())
    text = str(info.value)
    assert text.startswith(f"--resume {latest}: the checkpoint does not fit the model")
    assert "not in the model: student.backbone.blocks.1." in text
    assert snapshot(run) == before

    new = tmp_path / "new"  # into a new run directory: the same check
    with pytest.raises(ConfigError, match=r"weight\(s\) differ in shape: "):
        run_recipe(RECIPE, overrides + ["model.backbone.params.embed_dim=16", f"run_dir={new}"],
                   resume=latest, stream=io.StringIO())
    assert not new.exists()


def test_a_checkpoint_continues_with_other_settings_only_in_a_new_run_dir(trained, tmp_path):
    run, overrides = trained
    before = snapshot(run)
    latest = ckpt.find_latest(str(run))
    longer, out = tmp_path / "longer", io.StringIO()
    assert run_recipe(RECIPE, overrides + ["train.steps=3", f"run_dir={longer}"], resume=latest,
                      stream=out) == 0
    assert "with settings that differ from its run's" in out.getvalue()
    assert "  train.steps: 2 → 3" in out.getvalue()
    assert [r["step"] for r in metrics(longer)] == [3]
    assert json.loads((longer / "environment.json").read_text())["resumed_from"] == latest
    assert "steps: 3" in (longer / "recipe.resolved.yaml").read_text()
    assert snapshot(run) == before


def test_the_interrupt_hint_resumes_this_run(toy, tmp_path, interrupt_at, capsys, monkeypatch):
    run = tmp_path / "my run"  # a space: the hint must quote
    overrides = toy("quickstart.yaml", steps=3, name="intr", run_dir=str(run))
    interrupt_at(1)
    assert run_recipe(RECIPE, overrides, stream=io.StringIO()) == 130
    out = capsys.readouterr().out
    hint = re.search(r"interrupted; continue with: (.*)", out).group(1)
    assert hint == resume_command(str(run))
    words = shlex.split(hint)
    assert words[:2] == ["arlkit", "run"] and "--resume" in words
    interrupt_at(None)
    monkeypatch.chdir(tmp_path)  # the hint does not depend on the recipe file or its overrides
    assert main(words[1:]) == 0
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]


def test_an_unreadable_or_missing_run_recipe_is_said(trained):
    run, overrides = trained
    (run / "recipe.resolved.yaml").write_text("")  # e.g. cut short by a crash
    before = snapshot(run)
    with pytest.raises(ConfigError, match="(?s)cannot compare the recipe with the run.s own.*"
                                          "the file is empty"):
        run_recipe(RECIPE, overrides, resume="latest", stream=io.StringIO())
    assert snapshot(run) == before
    (run / "recipe.resolved.yaml").unlink()
    out = io.StringIO()
    assert run_recipe(RECIPE, overrides, resume="latest", stream=out) == 0
    assert f"note: {run} has no recipe.resolved.yaml to compare the recipe with" in out.getvalue()
    assert (run / "recipe.resolved.yaml").exists()
