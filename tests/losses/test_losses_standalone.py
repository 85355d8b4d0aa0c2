"""The losses, balancers, heads and EMA import without pluggy, pydantic, rich or the engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FORBIDDEN = ("pluggy", "pydantic", "rich", "arlkit.engine")
IMPORTS = [
    "from arlkit.losses.mim import mim_loss",
    "from arlkit.losses import mim_loss, MIMLoss, patchify, unpatchify, MaskGenerator",
    "from arlkit.losses import SpeckleGANLoss, SelfDistillationLoss",
    "from arlkit.balancers import GradNormRatio, FixedWeights",
    "import arlkit.models.heads",
    "import arlkit.models.discriminator",
    "import arlkit.models.ema",
]


def test_imports_pull_in_no_forbidden_module() -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        forbidden = {FORBIDDEN!r}
        report = {{}}
        for stmt in {IMPORTS!r}:
            exec(stmt)
            report[stmt] = sorted(
                m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)
            )
        report["torch loaded"] = ["torch" in sys.modules]
        print(json.dumps(report))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report.pop("torch loaded") == [True]
    offenders = {stmt: mods for stmt, mods in report.items() if mods}
    assert offenders == {}, f"imports that load forbidden modules: {offenders}"
    assert list(report) == IMPORTS


def test_float_and_integer_masks_work_like_bool_masks() -> None:
    """MAE's convention (a 0/1 float mask, 1 = masked) gives the same losses as a bool mask."""
    import pytest
    import torch

    from arlkit.errors import DataError
    from arlkit.losses import PatchDistillationLoss, masked_patch_pairs, mim_loss

    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    ref = mim_loss(pred, target, mask)
    for other in (mask.float(), mask.long(), mask.half()):
        assert torch.equal(mim_loss(pred, target, other), ref)
        fake, real = masked_patch_pairs(pred, target, other, patch_size=4)
        assert torch.equal(fake, masked_patch_pairs(pred, target, mask, patch_size=4)[0])
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert torch.equal(PatchDistillationLoss(out_dim=8)(s, t, mask.float()),
                       PatchDistillationLoss(out_dim=8)(s, t, mask))
    with pytest.raises(DataError, match="mim_loss: the mask must be bool or hold only 0 and 1"):
        mim_loss(pred, target, mask.float() * 0.5)


def test_step_is_needed_only_with_a_teacher_temperature_warm_up() -> None:
    import pytest
    import torch

    from arlkit.errors import ConfigError
    from arlkit.losses import SelfDistillationLoss

    s, t = torch.randn(8, 16), torch.randn(4, 16)  # 4 student views of 2 images, 2 teacher
    plain = SelfDistillationLoss(out_dim=16, teacher_temp=0.07, warmup_teacher_temp=0.07)
    after = SelfDistillationLoss(out_dim=16, teacher_temp=0.07, warmup_teacher_temp=0.04,
                                 warmup_teacher_temp_steps=10)
    assert torch.equal(plain(s, t), after(s, t, step=10))  # no warm-up: step may be left out
    with pytest.raises(ConfigError, match="pass step .* warms up over 10 steps"):
        after(s, t)
