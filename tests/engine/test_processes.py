"""Runs in real processes: SIGKILL mid-run, Ctrl-C, and two-process training (gloo)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from toy_recipes import RECIPES, partly_unreadable_dataset

from arlkit.engine import checkpoint as ckpt

PY = sys.executable


def arlkit_cmd(*args: str) -> list[str]:
    return [PY, "-m", "arlkit", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended early ({proc.returncode}): {out}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def test_sigkill_never_leaves_a_corrupt_checkpoint(toy, tmp_path):
    run = tmp_path / "run"
    overrides = toy("quickstart.yaml", steps=400, **{"train.ckpt_every": 1, "train.keep_last": 2})
    for kills in range(3):
        args = ["run", str(RECIPES / "quickstart.yaml"), *overrides]
        if kills:
            args.append("--resume")
        proc = subprocess.Popen(arlkit_cmd(*args), env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        seen = ckpt.find_latest(str(run))
        # wait for a checkpoint newer than the one the run started from
        wait_for(lambda seen=seen: ckpt.find_latest(str(run)) not in (None, seen), proc)
        time.sleep(0.05 * kills)  # land at different points of the write cycle
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        latest = ckpt.find_latest(str(run))
        tensors, state, _ = ckpt.read_checkpoint(latest)  # complete and loadable
        assert state["step"] == int(latest.rsplit("-", 1)[1])
    last_step = state["step"]
    # the surviving checkpoint trains on; 2 more steps, a shorter run: a new run directory
    finish = toy("quickstart.yaml", steps=last_step + 2,
                 **{"train.ckpt_every": 1, "run_dir": tmp_path / "finish"})
    done = subprocess.run(arlkit_cmd("run", str(RECIPES / "quickstart.yaml"), *finish,
                                     "--resume", latest), env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {latest}" in done.stdout
    assert ckpt.find_latest(str(tmp_path / "finish")).endswith(f"step-{last_step + 2:08d}")


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(toy, tmp_path):
    run = tmp_path / "run"
    overrides = toy("quickstart.yaml", steps=400, **{"train.ckpt_every": 1000})
    proc = subprocess.Popen(arlkit_cmd("run", str(RECIPES / "quickstart.yaml"), *overrides),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert "interrupted; continue with" in out
    latest = ckpt.find_latest(str(run))
    assert latest is not None and int(latest.rsplit("-", 1)[1]) >= 2


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_processes_match_one_process(toy, tmp_path):
    def train(nproc: int, run_dir: pathlib.Path) -> list[dict]:
        overrides = toy("paper.yaml", steps=3) + [
            f"run_dir={run_dir}",
            "objectives.speckle_gan.params.max_patches=100000",
            "objectives.speckle_gan.params.start_step=0",
            "model.backbone.params.drop_path_rate=0.0",  # per-sample randomness differs by layout
        ]
        cmd = [PY, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--standalone", "-m", "arlkit", "run", str(RECIPES / "paper.yaml"), *overrides]
        done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        # every gradient already has its parameter's layout: DDP copies none of them
        assert "Grad strides do not match" not in done.stderr, done.stderr
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    one = train(1, tmp_path / "one")
    two = train(2, tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "loss_mim", "loss_speckle_gan", "loss_self_distillation", "w_lambda"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)


def test_a_batch_unreadable_on_one_process_is_skipped_by_all(toy, tmp_path):
    # a quarter of the images are junk: a step where one process draws junk and the other a
    # good image must be skipped by both, or the second waits forever in its all-reduce
    import re

    run_dir = tmp_path / "run"
    overrides = toy("ablation-mim.yaml", steps=8) + [
        f"run_dir={run_dir}", "data.batch_size=2", "train.log_every=1",
        partly_unreadable_dataset(tmp_path, 2)]
    cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m",
           "arlkit", "run", str(RECIPES / "ablation-mim.yaml"), *overrides]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out  # the run ended short and said so, on both processes
    ran = [int(n) for n in re.findall(r"only (\d+) of 8 steps ran: \d+ step\(s\) had a batch "
                                      r"with no readable image", out)]
    assert len(ran) == 2 and ran[0] == ran[1] and 0 < ran[0] < 8, out
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == ran[0]


def _children(pid: int) -> list[int]:
    kids = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_ctrl_c_on_one_process_stops_all_after_the_same_step(toy, tmp_path):
    """``kill -INT`` of one worker (or Ctrl-C reaching the workers at different moments): all
    processes stop after the same step, which is checkpointed; none waits forever."""
    run = tmp_path / "run"
    overrides = toy("quickstart.yaml", steps=400, **{"train.ckpt_every": 1000}) + [
        "data.batch_size=2"]
    cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m",
           "arlkit", "run", str(RECIPES / "quickstart.yaml"), *overrides]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    rank1 = next(p for p in workers if "LOCAL_RANK=1" in pathlib.Path(
        f"/proc/{p}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace"))
    os.kill(rank1, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in (*workers, proc.pid):  # the workers too: killing torchrun orphans them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError("a process waited forever after the other one stopped") from None
    assert "interrupted; continue with" in out, out  # rank 0 stopped too, and said so
    latest = ckpt.find_latest(str(run))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert latest is not None and latest.endswith(f"step-{steps[-1]:08d}"), (latest, steps)
    assert steps[-1] < 400


def test_a_ctrl_c_arriving_during_the_stop_agreement_is_kept(toy, tmp_path, monkeypatch):
    """Under DDP the SIGINT handler mostly runs as a blocking all-reduce returns, and so often
    while the processes agree on stopping: that request must stop the run after the next step,
    not be overwritten by the reduced "no" (the process then trained to the end)."""
    import io

    from arlkit.engine.run import run_recipe
    from arlkit.engine.trainer import Trainer

    original = Trainer._any_process
    fired = []

    def any_process(self, flag):
        agreed = original(self, flag)
        if self.step == 2 and not fired:  # the first call after step 2: the stop agreement
            fired.append(flag)
            self._on_sigint(signal.SIGINT, None)  # Ctrl-C lands inside the reduction
        return agreed

    monkeypatch.setattr(Trainer, "_any_process", any_process)
    run = tmp_path / "run"
    code = run_recipe(str(RECIPES / "quickstart.yaml"), toy("quickstart.yaml", steps=6),
                      stream=io.StringIO())
    assert fired == [False]
    assert code == 130
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # agreed after step 3, the next step
    assert ckpt.find_latest(str(run)).endswith("step-00000003")
