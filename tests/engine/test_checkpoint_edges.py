"""Checkpoints of a run resumed from an earlier one, and runs killed while deleting one."""

from __future__ import annotations

import os
import shutil

import torch

from arlkit.engine import checkpoint as ckpt


def write(run: str, step: int, keep_last: int = 2) -> str:
    return ckpt.write_checkpoint(run, step, {"w": torch.ones(1) * step}, {"step": step},
                                 keep_last=keep_last)


def steps(run: str) -> list[int]:
    return [int(p.rsplit("-", 1)[1]) for p in ckpt.list_checkpoints(run)]


def test_a_run_resumed_from_an_earlier_checkpoint_goes_on_from_its_own(tmp_path):
    """Resumed from step 50 while step 60 exists (e.g. train.keep_last=1 after a rewind):
    the checkpoint written at step 53 (Ctrl-C) is the one ``--resume`` continues, not the
    step 60 the run had reached before, and it is not pruned as the oldest."""
    run = str(tmp_path)
    for step in (50, 60):
        write(run, step, keep_last=3)
    path = write(run, 53, keep_last=1)
    assert os.path.isdir(path)
    assert ckpt.find_latest(run) == path
    _, state, _ = ckpt.read_checkpoint(ckpt.find_latest(run))
    assert state["step"] == 53
    write(run, 55, keep_last=2)
    assert steps(run) == [53, 55]


def killed_while_deleting(monkeypatch):
    """``shutil.rmtree`` that dies after deleting the weights of a complete checkpoint."""
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if os.path.exists(os.path.join(path, ckpt.MARKER)):
            os.remove(os.path.join(path, "model.safetensors"))
            raise KeyboardInterrupt  # the process is killed here
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def every_listed_checkpoint_reads(run: str) -> None:
    for path in ckpt.list_checkpoints(run):
        ckpt.read_checkpoint(path)


def test_killed_while_pruning_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    run = str(tmp_path)
    write(run, 1), write(run, 2)
    killed_while_deleting(monkeypatch)
    try:
        write(run, 3)  # prunes step 1
    except KeyboardInterrupt:
        pass
    every_listed_checkpoint_reads(run)
    assert steps(run)[-1] == 3


def test_killed_while_replacing_a_checkpoint_of_the_same_step(tmp_path, monkeypatch):
    run = str(tmp_path)
    write(run, 1), write(run, 2)
    killed_while_deleting(monkeypatch)
    try:
        write(run, 2)  # written again, e.g. by a run resumed from step 1
    except KeyboardInterrupt:
        pass
    every_listed_checkpoint_reads(run)
    assert steps(run)[0] == 1



def test_a_rewind_is_said_before_training(toy, tmp_path, capsys):
    """Resuming a run from an earlier checkpoint names the later ones its first save deletes,
    and how to keep them."""
    import io

    from toy_recipes import RECIPES

    from arlkit.engine.run import run_recipe

    recipe = str(RECIPES / "quickstart.yaml")
    overrides = toy("quickstart.yaml", steps=4, **{"train.ckpt_every": 2, "train.keep_last": 3})
    assert run_recipe(recipe, overrides, stream=io.StringIO()) == 0
    run = str(tmp_path / "run")
    first = ckpt.list_checkpoints(run)[0]
    assert steps(run) == [2, 4]
    assert run_recipe(recipe, overrides, resume=first, dry_run=True) == 0
    out = capsys.readouterr().out
    assert (f"note: resuming {run} from step 2 while it holds later checkpoints (step-00000004): "
            "they are the run before this resume, and this run's first checkpoint deletes them; "
            f"to keep them, continue in another run directory (run_dir=NEW --resume {first})") in out
    assert steps(run) == [2, 4]  # a dry run deletes nothing
    assert run_recipe(recipe, overrides, resume=first, stream=io.StringIO()) == 0
    assert steps(run) == [2, 4]  # the rewound run's own step 4
    assert run_recipe(recipe, overrides, resume=ckpt.find_latest(run), dry_run=True) == 0
    assert "later checkpoints" not in capsys.readouterr().out
