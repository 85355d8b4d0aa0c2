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
