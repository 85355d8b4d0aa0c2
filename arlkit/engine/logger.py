"""Progress and metrics of a run: a rich display on a terminal, plain periodic lines
otherwise, ``metrics.jsonl`` in the run directory, and optional TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import fsspec

__all__ = ["RunLogger", "format_metrics"]


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class RunLogger:
    """Writes metrics and shows progress (on the main process only).

    Args:
        run_dir: run directory (local path or fsspec URL).
        total_steps: steps of the run, for the ETA.
        enabled: False on non-zero ranks: everything becomes a no-op.
        stream: where plain lines go (default stdout).
        rich: force the rich display on/off (default: when ``stream`` is a terminal).
        tensorboard: also write TensorBoard scalars (needs ``arlkit[tensorboard]``).
    """

    def __init__(
        self,
        run_dir: str,
        total_steps: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        rich: bool | None = None,
        tensorboard: bool = False,
        start_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.stream = stream or sys.stdout
        self.start_time = time.perf_counter()
        self.start_step = start_step
        self._progress = None
        self._task = None
        self._tb = None
        if not enabled:
            return
        self._metrics_path = f"{run_dir.rstrip('/')}/metrics.jsonl"
        self._metrics = fsspec.open(self._metrics_path, "a").open()
        use_rich = self.stream.isatty() if rich is None else rich
        if use_rich:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps,
                                                 completed=start_step, metrics="")
            self._progress.start()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                from arlkit.errors import ConfigError

                raise ConfigError(
                    "train.tensorboard is true but TensorBoard is not installed; "
                    "pip install 'arlkit[tensorboard]' or set train.tensorboard=false"
                ) from exc
            self._tb = SummaryWriter(log_dir=f"{run_dir.rstrip('/')}/tensorboard")

    def resume_at(self, step: int) -> None:
        """The run goes on after ``step`` (a resumed checkpoint): the ETA counts from here,
        and ``metrics.jsonl`` drops the records of later steps, which the run before the
        resume logged and this one logs again (so each step has one record)."""
        self.start_step, self.start_time = step, time.perf_counter()
        if self._progress is not None:
            self._progress.update(self._task, completed=step)
        if not self.enabled:
            return
        self._metrics.close()
        with fsspec.open(self._metrics_path, "r") as handle:
            kept = [line for line in handle.read().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
        with fsspec.open(self._metrics_path, "w") as handle:
            handle.write("".join(f"{line}\n" for line in kept))
        self._metrics = fsspec.open(self._metrics_path, "a").open()

    def log(self, step: int, metrics: dict[str, Any], show: bool = True) -> None:
        """Record metrics of ``step`` (1-based count of finished steps)."""
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, metrics=format_metrics(metrics))
        elif show:
            elapsed = time.perf_counter() - self.start_time
            done = max(step - self.start_step, 1)
            eta = elapsed / done * (self.total - step)
            self.stream.write(
                f"step {step}/{self.total}  eta {eta:.0f}s  {format_metrics(metrics)}\n"
            )
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        self._metrics.close()
