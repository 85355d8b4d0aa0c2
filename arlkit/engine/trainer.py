"""The training loop: student, EMA teacher, objectives, balancer, checkpoints, faults."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from arlkit.data.condition import condition_keys
from arlkit.engine import checkpoint as ckpt
from arlkit.engine.build import Components
from arlkit.engine.data import BatchPlan, StepBatchSampler, make_loader, seed_for
from arlkit.engine.distributed import DistInfo
from arlkit.engine.logger import RunLogger
from arlkit.engine.optim import clip_gradients, load_optimizer_state, param_groups
from arlkit.engine.schedules import cosine
from arlkit.engine.step import Step
from arlkit.errors import ArlkitError
from arlkit.models.ema import ema_update

#: the tag of the global masks' random stream in ``seed_for(seed, step, *MASK_STREAM)``
MASK_STREAM = (0x6D61736B, 0, 0)  # "mask"

__all__ = ["TrainResult", "Trainer", "TrainingStopped"]


class TrainingStopped(ArlkitError):
    """The run stopped on purpose (non-finite losses, Ctrl-C); the message says why."""


class _SkippedStep(Exception):
    """A non-finite loss or gradient norm: the step changes nothing."""


@dataclass
class TrainResult:
    steps_done: int
    last_checkpoint: str | None
    losses: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False


class Trainer:
    """Runs the optimisation of a built recipe.

    Args:
        comps: what :func:`~arlkit.engine.build.build_components` assembled.
        run_dir: where checkpoints and metrics go.
        device: torch device.
        dist_info: process layout.
        logger: progress and metrics.
        order: ``order(epoch)`` → dataset indices of the epoch (the sampler).
        views_dataset: the dataset with views applied, keyed by
            ``(index, position, epoch[, repeat])`` (:class:`~arlkit.engine.data.ViewsDataset`).
    """

    def __init__(self, comps: Components, run_dir: str, device: torch.device,
                 dist_info: DistInfo, logger: RunLogger, order: Any, views_dataset: Any) -> None:
        self.c, self.run_dir, self.device = comps, run_dir, device
        self.dist, self.logger = dist_info, logger
        recipe = comps.recipe
        self.recipe = recipe
        self.student = comps.student.to(device)
        # side information the conditioners read (e.g. probe), taken from every batch
        self.condition_keys = condition_keys(self.student.backbone)
        self.teacher = comps.teacher.to(device) if comps.teacher is not None else None
        for obj in comps.objectives:
            obj.to(device)
        self.model: nn.Module = self.student
        if dist_info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None
            )
        if recipe.train.compile:
            # compile the method, not the module: state_dict keys stay the model's own
            backbone = self.student.backbone
            backbone.forward_features = torch.compile(backbone.forward_features)
        opt = recipe.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.student), lr=opt.lr, betas=opt.betas)
        self.plan = BatchPlan(recipe.data.batch_size, dist_info.world_size, dist_info.rank,
                              opt.accum_steps, len(views_dataset))
        self.order, self.views_dataset = order, views_dataset
        self.base_lr = opt.lr * recipe.data.batch_size / 256
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.bad_file_log: Any = None  # set by fit(); its counts travel in checkpoints
        self._bad_file_state: dict[str, Any] | None = None  # from a resumed checkpoint
        self.seen = 0
        self.last_checkpoint: str | None = None
        self._stop_requested = False
        dtype = torch.bfloat16 if recipe.train.precision == "bf16" else None
        self.autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                         else contextlib.nullcontext())
        balance = [p for o in comps.objectives if (p := o.balance_parameter(self.student)) is not None]
        self.balance_param = balance[0] if balance else None

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        if self.teacher is not None:
            tensors.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        for obj in self.c.objectives:
            tensors.update({f"aux.{obj.name}.{k}": v for k, v in obj.state_dict().items()})
        return tensors

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "objectives": {o.name: o.aux_state_dict() for o in self.c.objectives},
            "balancer": self.c.balancer.state_dict() if hasattr(self.c.balancer, "state_dict") else {},
            "rng": ckpt.capture_rng(),
            "nonfinite_total": self.nonfinite_total,
            "seen": self.seen,
            "bad_files": self.bad_file_log.state_dict() if self.bad_file_log is not None else None,
            "sampler": {"step": self.step, "global_batch": self.plan.global_batch,
                        "seed": self.recipe.seed},
        }

    def save(self) -> str | None:
        if self.dist.is_main:
            self.last_checkpoint = ckpt.write_checkpoint(
                self.run_dir, self.step, self.state_tensors(), self.state(),
                metadata={"recipe": self.recipe.name}, keep_last=self.recipe.train.keep_last)
        if self.dist.enabled:
            torch.distributed.barrier()
        return self.last_checkpoint

    def load(self, path: str) -> None:
        tensors, state, _ = ckpt.read_checkpoint(path)
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            head, rest = key.split(".", 1)
            if head == "aux":
                name, rest = rest.split(".", 1)
                head = f"aux.{name}"
            groups.setdefault(head, {})[rest] = value
        self.student.load_state_dict(groups.pop("student"))
        if self.teacher is not None:
            self.teacher.load_state_dict(groups.pop("teacher"))
        for obj in self.c.objectives:
            obj.load_state_dict(groups.get(f"aux.{obj.name}", {}))
            obj.load_aux_state_dict(state["objectives"].get(obj.name, {}))
        # lr and weight decay are set from the schedules every step; betas are the recipe's
        load_optimizer_state(self.optimizer, state["optimizer"])
        if hasattr(self.c.balancer, "load_state_dict"):
            self.c.balancer.load_state_dict(state["balancer"])
        ckpt.restore_rng(state["rng"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.seen = int(state["seen"])
        self._bad_file_state = state.get("bad_files")  # checkpoints before 2026-11-28 lack it
        self.last_checkpoint = path

    # ------------------------------------------------------------------ steps
    def _set_schedules(self) -> float:
        opt, total = self.recipe.optim, self.recipe.train.steps
        lr = cosine(self.step, total, self.base_lr, opt.min_lr, opt.warmup_steps)
        wd = cosine(self.step, total, opt.weight_decay, opt.weight_decay_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_wd"):
                group["weight_decay"] = wd
        return lr

    def _make_step(self, batch: dict[str, Any], mask_full: torch.Tensor | None) -> Step:
        dev = self.device

        def view_major(key: str) -> torch.Tensor | None:
            """``(b, V, C, S, S)`` batch entry → ``(V·b, C, S, S)`` on the device, or None."""
            if key not in batch:
                return None
            t = batch[key].to(dev, non_blocking=True)
            return t.transpose(0, 1).reshape(-1, *t.shape[2:])

        n_global = batch["global"].shape[1]
        global_views = view_major("global")
        global_clean = view_major("global_clean")
        local_views = view_major("local")
        n_local = batch["local"].shape[1] if local_views is not None else 0
        mask = None
        if mask_full is not None:
            gb = self.plan.global_batch
            rows = (torch.arange(n_global)[:, None] * gb + batch["pos"][None, :]).reshape(-1)
            mask = mask_full[rows].to(dev)  # (V_g·b, N) view-major like the views
        side = {k: batch[k].to(dev, non_blocking=True) for k in self.condition_keys}
        return Step(self.step, self.plan.epoch_of(self.step), global_views, local_views,
                    batch["organ"].to(dev), mask, self.c.context.grid, n_global, n_local,
                    global_clean, side)

    def _global_mask(self, n_global: int) -> torch.Tensor | None:
        # five parts: never a view seed (view_seed mixes three or four), whose stream for
        # item 7 of epoch `step` the old (seed, step, 7) drew again
        g = torch.Generator().manual_seed(seed_for(self.recipe.seed, self.step, *MASK_STREAM))
        for obj in self.c.objectives:
            mask = obj.make_mask(n_global * self.plan.global_batch, g)
            if mask is not None:
                return mask
        return None

    def _any_empty(self, micro_batches: list[dict[str, Any]]) -> bool:
        """Whether a micro-batch of this step holds no readable image on any process.

        Such a step is skipped by all processes alike: a process that skipped alone would
        leave the others waiting in their gradient all-reduce.
        """
        return self._any_process(any(b["n"] == 0 for b in micro_batches))

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (one all-reduce; none without DDP)."""
        if not self.dist.enabled:  # no tensor, no device synchronisation
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop. Ctrl-C reaches the processes one by one (or
        only one of them, with ``kill -INT``): they must all stop after the same step, or one
        waits at the checkpoint's barrier while the others are in the next step's all-reduce.

        The decision is the all-reduced value alone. A request that arrives while it is being
        reduced (the handler runs as the blocking call returns) is kept for the next step:
        assigning the reduced value over the flag would lose it, and that process would train
        to the end.
        """
        agreed = self._any_process(self._stop_requested)
        self._stop_requested = self._stop_requested or agreed
        return agreed

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def _train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float] | None:
        lr = self._set_schedules()
        logs: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with contextlib.ExitStack() as per_step:
                # state that moves once per optimizer step (a center, the discriminator)
                # moves when these close; a skipped step raises through them
                for obj in self.c.objectives:
                    per_step.enter_context(obj.accumulating())
                self._accumulate(micro_batches, logs)
        except _SkippedStep:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.teacher is not None:
            self._ema_update()
        logs = self._mean_over_processes(logs)
        logs["lr"] = lr
        return logs

    def _accumulate(self, micro_batches: list[dict[str, Any]], logs: dict[str, float]) -> None:
        """Forward and backward every micro-batch, then clip and step the optimizer.

        Raises:
            _SkippedStep: a loss or the gradient norm is not finite (on any process).
        """
        accum = len(micro_batches)
        mask_full = self._global_mask(self.c.context.n_global)
        step = None
        for i, batch in enumerate(micro_batches):
            step = self._make_step(batch, mask_full)
            if self.teacher is not None:
                with torch.no_grad(), self.autocast:
                    for obj in self.c.objectives:
                        obj.teacher_forward(step, self.teacher)
            sync = (self.model.no_sync() if self.dist.enabled and i < accum - 1
                    else contextlib.nullcontext())
            with sync:
                with self.autocast:
                    losses = self.model(step, self.c.objectives)
                weighted = {o.name: losses[o.name].float() * o.weight for o in self.c.objectives}
                total, weights = self.c.balancer(weighted, self.balance_param)
                if not self._all_finite(total):
                    raise _SkippedStep
                (total / accum).backward()
            for obj in self.c.objectives:
                for key, value in obj.auxiliary_step(step, self.autocast).items():
                    logs[key] = logs.get(key, 0.0) + value / accum
            for name, value in losses.items():
                logs[f"loss_{name}"] = logs.get(f"loss_{name}", 0.0) + float(value.detach()) / accum
            logs["loss"] = logs.get("loss", 0.0) + float(total.detach()) / accum
            for key, value in weights.items():
                logs[f"w_{key}"] = float(value)
        if step is not None:
            for obj in self.c.objectives:
                obj.after_backward(step, self.student)
        optim = self.recipe.optim
        norm = clip_gradients(self.student.parameters(), optim.grad_clip,
                              per_parameter=optim.grad_clip_mode == "per_parameter")
        if not self._all_finite(norm):
            raise _SkippedStep
        logs["grad_norm"] = float(norm)
        self.optimizer.step()

    def _mean_over_processes(self, logs: dict[str, float]) -> dict[str, float]:
        """Logged values of the global batch: the mean of the processes' values."""
        if not self.dist.enabled:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        return dict(zip(keys, (values / self.dist.world_size).tolist(), strict=True))

    @torch.no_grad()
    def _ema_update(self) -> None:
        t = self.recipe.teacher
        m = cosine(self.step, self.recipe.train.steps, t.momentum, t.momentum_end)
        # running statistics (a head's batch norm) are copied: the teacher runs in eval mode
        ema_update(self.teacher, self.student, m, copy_buffers=True)

    # ------------------------------------------------------------------ loop
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.logger.message("interrupt: finishing this step, writing a checkpoint, then stopping "
                            "(press Ctrl-C again to stop at once)")

    def fit(self, bad_file_log: Any = None) -> TrainResult:
        recipe = self.recipe
        total, accum = recipe.train.steps, self.plan.accum_steps
        sampler = StepBatchSampler(self.order, self.plan, self.step, total)
        loader = make_loader(self.views_dataset, sampler, recipe.data.num_workers,
                             self.device.type == "cuda")
        result = TrainResult(self.step, self.last_checkpoint)
        self.bad_file_log = bad_file_log
        if bad_file_log is not None and self._bad_file_state:
            # resumed: the bad-file fraction continues from the earlier run's counts
            bad_file_log.load_state_dict(self._bad_file_state)
        previous = signal.getsignal(signal.SIGINT)
        in_main_thread = True
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (notebooks, tests)
            in_main_thread = False
        start, images, empty = time.perf_counter(), 0, 0
        try:
            pending: list[dict[str, Any]] = []
            for batch in loader:
                if bad_file_log is not None:
                    bad_file_log.record(batch["n"], batch["bad_files"])
                pending.append(batch)
                if len(pending) < accum:
                    continue
                step_batches, pending = pending, []
                if self._any_empty(step_batches):  # every process skips the same step
                    empty += 1
                    continue
                logs = self._train_step(step_batches)
                images += sum(b["n"] for b in step_batches) * self.dist.world_size
                self.seen += sum(b["n"] for b in step_batches) * self.dist.world_size
                if logs is None:
                    self.nonfinite_total += 1
                    self.nonfinite_run += 1
                    self.logger.message(f"step {self.step + 1}: non-finite loss or gradient, "
                                        f"step skipped ({self.nonfinite_run} in a row)")
                    if self.nonfinite_run >= recipe.train.max_nonfinite:
                        raise TrainingStopped(
                            f"{self.nonfinite_run} consecutive non-finite steps at step "
                            f"{self.step + 1}; the last good checkpoint is "
                            f"{self.last_checkpoint or '(none yet)'}. Lower optim.lr, enable "
                            "optim.grad_clip or use train.precision=fp32"
                        )
                    self.step += 1
                    continue
                self.nonfinite_run = 0
                self.step += 1
                elapsed = time.perf_counter() - start
                logs["img_per_s"] = images / max(elapsed, 1e-9)
                logs["epoch"] = self.plan.epoch_of(self.step - 1)
                logs["nonfinite"] = self.nonfinite_total
                result.losses.append(logs)
                show = self.step % recipe.train.log_every == 0 or self.step == total
                self.logger.log(self.step, logs, show=show)
                if self.step % recipe.train.ckpt_every == 0 or self.step == total:
                    self.save()
                if self._stop_agreed():
                    if self.step % recipe.train.ckpt_every and self.step != total:
                        self.save()
                    result.interrupted = True
                    break
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        if not result.interrupted and self.step < total:
            # the sampler yields one batch per step: batches without a readable image were
            # dropped, so the run would end short without a word
            if self.step % recipe.train.ckpt_every:  # keep the steps done since the last one
                self.save()
            raise TrainingStopped(
                f"only {self.step} of {total} steps ran: {empty} step(s) had a batch with no readable "
                f"image (the unreadable files are listed in {self.run_dir.rstrip('/')}/"
                f"bad_files.jsonl); the last checkpoint is {self.last_checkpoint or '(none)'}. "
                "Fix or remove the unreadable files, then continue with --resume"
            )
        result.steps_done = self.step
        result.last_checkpoint = self.last_checkpoint
        return result
