"""The README's main job, then the paper's downstream protocol, through the installed CLI.

``arlkit run recipes/quickstart.yaml`` pretrains on the embedded synthetic corpus; then
``arlkit eval linear --data synthetic:breast`` probes the exported backbone and a random
initialisation of the same architecture with the same protocol and seed.

Measured on the 2-core development CPU (2026-11-28, the Numba deform kernels that ``auto``
picks on the CPU), 400/100/400 train/val/test images, the probe trained to convergence (at
least 2000 steps): the shipped quickstart reaches 0.833 / 0.833 / 0.828 on probe seeds 0 / 1 /
2 against 0.813 / 0.835 / 0.815 for random init — margins +0.020, -0.003, +0.013, inside the
±0.04 bootstrap interval of 400 test images (with the pure-PyTorch reference op: 0.838 / 0.833
/ 0.830). Re-run 2026-11-29 on the 2-core AMD EPYC VM, after the fix that keeps the trainer's
thread count (a different float summation order): 0.820 against 0.820 on probe seed 0; re-run
after the reference-fidelity fixes of the evening (LayerNorm eps 1e-6, among others): 0.8225
against 0.8200; with the masks drawn from their own random stream (the next evening; only
the MIM masks changed): 0.8375 against 0.8200 — what other masks alone move. Trained 12× longer (2400 steps), the recipe still leaves breast within the
init-to-init spread (RESULTS.md, issue 7). At this toy scale (0.5 M parameters, ~3k images
seen) pretraining does not yet beat random features by a margin that holds across seeds (every
setting that moves the weights further did worse; see benchmarks/RESULTS.md, issue 7). The
exported EMA teacher of the shipped 200 steps is still within 0.4% of its initialisation
(relative L2 distance of the weights, measured 2026-11-29; the student moved 2.1%), and
``--backbone random`` with the same seed is that initialisation, so the two differ by little
more than the training moved the teacher. Random
init is a noisy baseline too: four init seeds give 0.800–0.840 on breast (sd 0.012–0.014), and
three training seeds of one 400-step distillation recipe moved lung by +0.06, -0.10 and -0.01
(benchmarks/probe_checkpoints.py). This test therefore pins what holds: the README's commands
run end to end, both backbones are far above chance, and pretraining does not damage the
features (pretrained ≥ random − 0.02; runs with a 10× learning rate fell 0.05–0.10 below).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def arlkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-m", "arlkit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def accuracy(out_dir: pathlib.Path) -> float:
    results = json.loads((out_dir / "results.json").read_text())
    return results["metrics"]["1"]["accuracy"]["value"]


def test_quickstart_pretraining_then_linear_probe(tmp_path):
    run = tmp_path / "quickstart"
    done = arlkit("run", "recipes/quickstart.yaml", f"run_dir={run}")
    assert f"exported backbone: {run}/backbone.safetensors" in done.stdout
    probe = ["eval", "linear", "--data", "synthetic:breast", "--n-train", "400",
             "--n-test", "400", "--seed", "0", "--arch", "recipes/quickstart.yaml"]
    arlkit(*probe, "--backbone", str(run), "--out", str(tmp_path / "pre"))
    arlkit(*probe, "--backbone", "random", "--out", str(tmp_path / "rand"))
    pre, rnd = accuracy(tmp_path / "pre"), accuracy(tmp_path / "rand")
    print(f"breast linear probe: pretrained {pre:.4f}, random {rnd:.4f}, margin {pre - rnd:+.4f}")
    settings = [json.loads((tmp_path / d / "settings.json").read_text()) for d in ("pre", "rand")]
    assert settings[0]["seeds"] == settings[1]["seeds"]  # the same protocol and split
    assert settings[0]["config"]["image_size"] == settings[1]["config"]["image_size"] == 48
    assert pre > 0.65 and rnd > 0.65  # chance is 0.5: both backbones carry lesion information
    assert pre >= rnd - 0.02, f"pretraining damaged the features: {pre:.4f} vs random {rnd:.4f}"


def test_distillation_pretraining_beats_random_init(tmp_path):
    """``recipes/quickstart-distill.yaml`` (self-distillation alone, batches of 32 images), cut
    to 800 of its 1200 steps (~5.5 min on 2 cores), learns what a random initialisation lacks.

    The probe is ``--solver lbfgs`` (logistic regression solved to convergence): the SGD
    probe's fixed step budget under-fits the anisotropic features of trained backbones more
    than random ones (RESULTS.md, issue 7), and an exact solver leaves only the features to
    compare. Measured on the 2-core development CPU (AMD EPYC, 2026-11-29), 800 steps, against
    ``--backbone random --seed 0`` on the same protocol and split (random: cardiac view
    0.7525, thyroid 0.7950, breast 0.8650), training seed 0 / 1:
    cardiac view 0.8825 / 0.8875 (+0.130 / +0.135), thyroid 0.8725 / 0.8900 (+0.078 / +0.095),
    breast 0.8600 / 0.8150 (−0.005 / −0.050); training seed 0 re-run after the evening's
    reference-fidelity fixes (LayerNorm eps 1e-6, among others): cardiac view 0.8550 (+0.103),
    thyroid 0.8825 (+0.088), breast 0.8600 (−0.005); and after the fix that gives two-class
    lbfgs probes their stated penalty (it had been doubled): random thyroid 0.8050, breast
    0.8625; pretrained cardiac view 0.8550 (+0.103), thyroid 0.8825 (+0.078), breast 0.8475
    (−0.015). At the recipe's full 1200 steps (2026-11-29,
    earlier machine): cardiac view +0.173 / +0.140, thyroid +0.088 / +0.088, breast
    +0.008 / −0.018; against the mean of four random inits over two data seeds
    (benchmarks/probe_checkpoints.py --solver lbfgs): cardiac view +0.165 / +0.133, thyroid
    +0.048 / +0.050, lung +0.086 / +0.039, breast +0.027 / +0.006 — the lesion task's gain at
    this budget is inside the noise of training seeds, which is why the quickstart test
    above cannot claim it either. The 800 steps keep the suite near its 15-minute budget;
    the cardiac-view and thyroid margins hold there with room to spare.
    Both backbones are probed in one ``arlkit eval compare`` process (the same protocol and
    numbers as ``eval linear``, each task rendered once). The thresholds keep about a third
    of the cardiac-view and thyroid margins (the init-to-init spread of the baseline is
    0.01–0.026); breast only has to keep its lesion information (random init 0.8625, chance
    0.5) within a margin beyond the −0.050 seen across training seeds.
    """
    run = tmp_path / "distill"
    done = arlkit("run", "recipes/quickstart-distill.yaml", f"run_dir={run}", "train.steps=800")
    assert f"exported backbone: {run}/backbone.safetensors" in done.stdout
    # one process probes both backbones on the three tasks (each task rendered once):
    # `eval compare` runs `eval linear`'s protocol and reports the same numbers
    tasks = ("cardiac_view", "thyroid", "breast")
    out = tmp_path / "compare"
    arlkit("eval", "compare", "--backbone", str(run), "--backbone", "random",
           *[arg for task in tasks for arg in ("--data", f"synthetic:{task}")],
           "--n-train", "400", "--n-test", "400", "--seed", "0",
           "--arch", "recipes/quickstart-distill.yaml", "--solver", "lbfgs",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    rows = json.loads((out / "results.json").read_text())["rows"]
    label = {run.name: "pre", "random": "rand"}
    scores = {(r["task"], label[r["backbone"]]): r["value"] for r in rows
              if r["metric"] == "accuracy" and r["fraction"] == 1.0}
    assert set(scores) == {(t, k) for t in tasks for k in ("pre", "rand")}
    for task in tasks:
        pre, rnd = scores[task, "pre"], scores[task, "rand"]
        print(f"{task} linear probe: pretrained {pre:.4f}, random {rnd:.4f}, "
              f"margin {pre - rnd:+.4f}")
    margin = {t: scores[t, "pre"] - scores[t, "rand"] for t in tasks}
    assert margin["cardiac_view"] >= 0.05, (
        f"pretraining learned no cardiac-view structure: margin {margin['cardiac_view']:+.4f}")
    assert margin["thyroid"] >= 0.03, (
        f"pretraining learned no thyroid nodule features: margin {margin['thyroid']:+.4f}")
    assert margin["breast"] >= -0.08, (
        f"pretraining destroyed the breast lesion features: margin {margin['breast']:+.4f}")
