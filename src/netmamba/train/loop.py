"""The step-based training loop shared by pre-training and fine-tuning.

    for step t in start .. total - 1:                 (the budget is steps, honoured exactly)
        batch  = BatchPlan.local_batch(t, rank)       (train/data.py: seeded, stateless order)
        seed torch with step_seed(seed, t, rank)      (dropout, drop path, masks)
        loss   = task.step_loss(model, batch)         (under bf16 autocast when asked)
        backward(loss x share), clip, AdamW step, schedule step
        log every `log_every` steps; at an epoch's end: task.end_of_epoch (validation, best)
        checkpoint every `checkpoint_every` steps, at epochs' ends and at the end

Resume: `RUN/last/` holds the model, the optimiser, the schedule, the torch generator, the step
and the task's own state (best score, history). Everything random in a step is derived from
(seed, step, rank), so a resumed run repeats the uninterrupted one bit for bit on CPU.

Several processes (torchrun): the model is wrapped in DistributedDataParallel, which averages
gradients. Each process scales its loss by its share of the global batch's weight (flows, or
the LDA loss's class weights), so the averaged gradient is the gradient of the loss over the
whole global batch, as a single process computes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netmamba.config import Config, ConfigError
from netmamba.train.checkpoint import find_state, load_training_state, save_training_state
from netmamba.train.data import STREAM_STEP, BatchPlan, step_seed, take
from netmamba.train.distributed import Distributed
from netmamba.train.optim import WarmupCosineSchedule

log = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"
STATE_FOLDER = "last"


@dataclass
class TrainConfig(Config):
    """Loop settings shared by pre-training and fine-tuning."""

    batch_size: int = 128  # GLOBAL batch: all processes together (lr = blr x batch / 256)
    steps: int = 0  # optimiser steps; 0 = epochs x steps per epoch
    epochs: float = 0.0  # used when steps is 0
    seed: int = 0  # data order, initialisation, masks, dropout
    grad_clip: float | None = None  # clip the gradient norm at this value (None = off)
    bf16: bool = False  # bfloat16 autocast for the forward pass (weights stay float32)
    log_every: int = 10  # steps between metrics.jsonl rows
    checkpoint_every: int = 500  # steps between resume states (also at epoch ends and the end)
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("TrainConfig.batch_size must be at least 1")
        if self.steps < 0 or self.epochs < 0:
            raise ConfigError("TrainConfig.steps and epochs must be >= 0")
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("TrainConfig: give a step budget (steps) or a number of epochs")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("TrainConfig.grad_clip must be positive (or null for none)")
        if self.log_every < 1 or self.checkpoint_every < 0 or self.eval_batch_size < 1:
            raise ConfigError(
                "TrainConfig: log_every >= 1, checkpoint_every >= 0, eval_batch_size >= 1"
            )


@dataclass
class StepLoss:
    """What a task's step gives: the loss to minimise (a mean over the local batch), its weight
    (the denominator of that mean: flows, or the sum of class weights) and parts to log."""

    loss: torch.Tensor
    weight: float
    parts: dict[str, float] = field(default_factory=dict)


class Task:
    """What differs between pre-training and fine-tuning; the loop does the rest."""

    model: nn.Module  # the bare model (not the DDP wrapper)
    arrays: dict[str, np.ndarray]  # training arrays (and labels), flows on the first axis

    def set_epoch(self, epoch: int) -> None:
        """Called before every step with the step's (0-based) epoch."""

    def train_mode(self) -> None:
        self.model.train()

    def step_loss(
        self, forward: nn.Module, batch: dict[str, np.ndarray], generator: torch.Generator
    ) -> StepLoss:
        raise NotImplementedError

    def end_of_epoch(self, epoch: int, step: int, dist: Distributed) -> dict[str, float]:
        """After the last step of each epoch (and of the run), on every process: validation
        metrics to log (rank 0), keeping the best checkpoint. Default: nothing."""
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON extras stored with every checkpoint of the model."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What the training data was: a resumed run must see the same."""
        return {"flows": len(next(iter(self.arrays.values())))}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and TensorBoard when it is installed; on rank 0
    only. Resuming at step t drops the rows logged after t (they are logged again)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.path = run_dir / METRICS_LOG
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = (
                [
                    line
                    for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step
                ]
                if self.path.exists()
                else []
            )
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional
            self.writer = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            prefix = row.get("kind", "train")
            for key, value in row.items():
                if key not in ("step", "kind") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Interrupted(Exception):
    """The loop stopped at `stop_after` steps (tests simulate a killed run with it)."""


@dataclass
class LoopResult:
    steps: int  # optimiser steps done in total
    total_steps: int
    epochs: int
    resumed_from: int | None
    seconds: float


def _progress(total: int, start: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def run_loop(
    task: Task,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupCosineSchedule,
    plan: BatchPlan,
    total_steps: int,
    run_dir: str | Path,
    dist: Distributed,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> LoopResult:
    """Train `task.model` for `total_steps` optimiser steps (see the module docstring)."""
    run_dir = Path(run_dir)
    model = task.model
    start_step, resumed_from = 0, None
    epoch_accum = [0.0, 0.0]  # sum of loss x weight, sum of weight over the current epoch
    if resume:
        folder = find_state(run_dir / STATE_FOLDER)
        if folder is None:
            raise FileNotFoundError(
                f"{run_dir}: no training state to resume ({STATE_FOLDER}/ is missing)"
            )
        state = load_training_state(folder, model, optimizer)
        _check_resumable(state, task, plan, total_steps, config, dist)
        schedule.load_state_dict(state["schedule"])
        task.load_state_dict(state.get("task", {}))
        start_step = resumed_from = int(state["step"])
        epoch_accum = list(state.get("epoch_accum", [0.0, 0.0]))
    metrics = MetricsLog(run_dir, dist.is_main, resumed_from)
    forward: nn.Module = model
    if dist.enabled:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    autocast = (
        torch.autocast(dist.device.type, dtype=torch.bfloat16)
        if config.bf16
        else contextlib.nullcontext()
    )
    bar = _progress(total_steps, start_step, progress and dist.is_main)
    started = time.perf_counter()
    window = {"time": time.perf_counter(), "samples": 0, "sums": [0.0, 0.0], "parts": {}}

    def save(step: int) -> None:
        if dist.is_main:
            save_training_state(
                run_dir / STATE_FOLDER,
                model,
                optimizer,
                {
                    "step": step,
                    "epoch": plan.epoch_of(step),
                    "steps_per_epoch": plan.steps_per_epoch,
                    "total_steps": total_steps,
                    "seed": config.seed,
                    "batch_size": config.batch_size,
                    "world_size": dist.world_size,
                    "schedule": schedule.state_dict(),
                    "data": task.fingerprint(),
                    "epoch_accum": epoch_accum,
                    "task": task.state_dict(),
                    "finished": step >= total_steps,
                },
                task.checkpoint_extra(),
            )
        dist.barrier()

    try:
        for step in range(start_step, total_steps):
            epoch = plan.epoch_of(step)
            task.set_epoch(epoch)
            task.train_mode()
            index = plan.local_batch(step, dist.rank)
            batch = take(task.arrays, index)
            seed = step_seed(config.seed, STREAM_STEP, step, dist.rank)
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            with autocast:
                out = task.step_loss(forward, batch, generator)
            loss = out.loss.float()
            local = [out.weight, float(loss.detach()) * out.weight]
            total_weight, loss_sum = dist.all_reduce_sum(local)
            share = out.weight / total_weight * dist.world_size if total_weight > 0 else 0.0
            (loss * share).backward()
            grad_norm = None
            if config.grad_clip is not None:
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.grad_clip
                    )
                )
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            done = step + 1
            global_loss = loss_sum / total_weight if total_weight > 0 else 0.0
            if not math.isfinite(global_loss):
                raise FloatingPointError(
                    f"the training loss became {global_loss} at step {done}; lower the "
                    "learning rate (optim.base_lr) or clip gradients (train.grad_clip)"
                )
            epoch_accum[0] += loss_sum
            epoch_accum[1] += total_weight
            window["samples"] += len(plan.global_batch(step))
            window["sums"][0] += loss_sum
            window["sums"][1] += total_weight
            for key, value in out.parts.items():
                window["parts"][key] = window["parts"].get(key, 0.0) + value
            window["steps"] = window.get("steps", 0) + 1
            bar.update(1)
            if done % config.log_every == 0 or done == total_steps:
                elapsed = max(time.perf_counter() - window["time"], 1e-9)
                rate = window["samples"] / elapsed
                row = {
                    "kind": "train",
                    "step": done,
                    "epoch": round(done / plan.steps_per_epoch, 4),
                    "loss": window["sums"][0] / max(window["sums"][1], 1e-12),
                    **{k: v / window["steps"] for k, v in window["parts"].items()},
                    "lr": lr,
                    "samples_per_s": rate,
                    "time": round(time.perf_counter() - started, 3),
                }
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}")
                window = {
                    "time": time.perf_counter(),
                    "samples": 0,
                    "sums": [0.0, 0.0],
                    "parts": {},
                }
            epoch_end = done % plan.steps_per_epoch == 0 or done == total_steps
            if epoch_end:
                train_loss = epoch_accum[0] / max(epoch_accum[1], 1e-12)
                valid = task.end_of_epoch(epoch, done, dist)
                metrics.write(
                    {
                        "kind": "epoch",
                        "step": done,
                        "epoch": round(done / plan.steps_per_epoch, 4),
                        "train_loss": train_loss,
                        **valid,
                    }
                )
                epoch_accum = [0.0, 0.0]
            if (
                epoch_end
                or done == total_steps
                or (config.checkpoint_every and done % config.checkpoint_every == 0)
            ):
                save(done)
            if on_step is not None:
                on_step(done)
            if stop_after is not None and done >= stop_after and done < total_steps:
                raise Interrupted(f"stopped after step {done}")
    finally:
        bar.close()
        metrics.close()
    return LoopResult(
        total_steps,
        total_steps,
        plan.epoch_of(total_steps - 1) + 1,
        resumed_from,
        time.perf_counter() - started,
    )


def _check_resumable(
    state: dict[str, Any],
    task: Task,
    plan: BatchPlan,
    total_steps: int,
    config: TrainConfig,
    dist: Distributed,
) -> None:
    expected = {
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": total_steps,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "data": task.fingerprint(),
    }
    for key, value in expected.items():
        if key in state and state[key] != value:
            raise ValueError(
                f"cannot resume: the run's {key} was {state[key]} and is now {value}; resume "
                "with the same data and settings"
            )
