"""AdamW with layer-wise learning-rate decay, and the warm-up + cosine schedule (SPEC §4-5).

Parameter groups (as in MAE / BEiT fine-tuning):
    scale(layer) = layer_decay ^ (L - layer)     L = the head's layer id = depth + 1
    embeddings (layer 0) learn slowest, block i (layer i + 1) faster, the head (layer L) at lr.
    no weight decay for 1-D parameters (norms, biases), names in `model.no_weight_decay()` and
    parameters flagged `_no_weight_decay` (Mamba's A_log and D); frozen parameters are left out.

Learning rate: lr = blr x effective_batch / 256. Schedule, by optimiser STEP t:
    t <  W:  lr(t) = peak * (t + 1) / W          (linear warm-up; the first step already learns)
    t >= W:  lr(t) = min + (peak - min) * (1 + cos(pi * (t - W) / (T - W))) / 2
and each group gets lr(t) x its scale. The schedule's state is the step count, so a resumed run
continues on the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netmamba.config import Config, ConfigError


@dataclass
class OptimConfig(Config):
    """Optimiser and schedule settings; the defaults are the fine-tuning recipe (SPEC §5)."""

    base_lr: float = 2e-3  # blr: lr = blr x effective batch / 256
    min_lr: float = 1e-6  # the cosine ends here (scaled by each group's layer scale)
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # 1.0 = the same lr for every layer
    betas: tuple[float, float] = (0.9, 0.999)  # pre-training uses (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0  # W; when 0, warmup_fraction of the total steps is used
    warmup_fraction: float = 0.0  # W = round(fraction x total steps) when warmup_steps is 0

    def __post_init__(self) -> None:
        if self.base_lr <= 0 or self.min_lr < 0:
            raise ConfigError("OptimConfig.base_lr must be > 0 and min_lr >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError("OptimConfig.layer_decay must be in (0, 1]")
        if self.weight_decay < 0:
            raise ConfigError("OptimConfig.weight_decay must be >= 0")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("OptimConfig: warmup_steps >= 0 and warmup_fraction in [0, 1)")

    def warmup_for(self, total_steps: int) -> int:
        """The warm-up length W for a run of `total_steps` optimiser steps."""
        if self.warmup_steps:
            return min(self.warmup_steps, total_steps)
        return round(self.warmup_fraction * total_steps)


def effective_lr(base_lr: float, effective_batch: int) -> float:
    """lr = blr x batch / 256, batch = per-device batch x devices x accumulation steps."""
    if effective_batch <= 0:
        raise ValueError(f"effective batch must be positive, got {effective_batch}")
    return base_lr * effective_batch / 256


def _listed(name: str, names: set[str]) -> bool:
    """Listed exactly, or through a listed module prefix ("pos_embed" covers "pos_embed.x")."""
    return name in names or any(name.startswith(n + ".") for n in names)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    no_weight_decay: Iterable[str] | None = None,
    layer_id: Callable[[str], int] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups keyed by (layer, decay or not), each with `lr_scale` and `names`.

    `layer_id` and `no_weight_decay` default to the model's methods of those names (the
    classifier contract); without `layer_id` every parameter is in one layer (scale 1).
    """
    if no_weight_decay is None:
        no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    skip = set(no_weight_decay)
    if layer_id is None and layer_decay != 1.0:
        layer_id = getattr(model, "layer_id", None)
        if layer_id is None:
            raise ValueError(
                f"layer-wise lr decay {layer_decay} needs model.layer_id(name); "
                f"{type(model).__name__} has none (use layer_decay=1.0)"
            )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    layers = {n: (int(layer_id(n)) if layer_id is not None else 0) for n, _ in named}
    top = max(layers.values())  # L: the head's layer
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        flagged = getattr(param, "_no_weight_decay", False)
        no_decay = param.ndim <= 1 or _listed(name, skip) or flagged
        key = (layers[name], no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "layer_id": layers[name],
                "lr_scale": layer_decay ** (top - layers[name]),
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module, config: OptimConfig, effective_batch: int
) -> torch.optim.AdamW:
    """AdamW over the layer-wise groups; each group's lr = peak lr x its scale (before warm-up)."""
    peak = effective_lr(config.base_lr, effective_batch)
    groups = param_groups(model, config.weight_decay, config.layer_decay)
    for g in groups:
        g["lr"] = peak * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=peak, betas=tuple(config.betas), eps=config.eps)


def warmup_cosine_lr(
    step: int, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> float:
    """The schedule's learning rate before optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every group's lr = warmup_cosine_lr(step) x group["lr_scale"]; resumable by step.

    Call `step()` once after each `optimizer.step()`. The lr for the first step is set at
    construction (peak / W when there is a warm-up of W steps).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in 0..{total_steps}, got {warmup_steps}")
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.last_step = 0  # optimiser steps taken so far
        self._apply()

    def lr_at(self, step: int) -> float:
        return warmup_cosine_lr(
            step, self.peak_lr, self.total_steps, self.warmup_steps, self.min_lr
        )

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state (goes into train_state.json)."""
        return {
            "last_step": self.last_step,
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("peak_lr", "total_steps", "warmup_steps", "min_lr"):
            if key in state and float(state[key]) != float(getattr(self, key)):
                raise ValueError(
                    f"cannot resume: the schedule's {key} was {state[key]} and is now "
                    f"{getattr(self, key)} (resume with the same settings)"
                )
        self.last_step = int(state["last_step"])
        self._apply()


def build_schedule(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int, effective_batch: int
) -> WarmupCosineSchedule:
    """The warm-up + cosine schedule of `config` for an optimiser from `build_optimizer`."""
    peak = effective_lr(config.base_lr, effective_batch)
    return WarmupCosineSchedule(
        optimizer, peak, total_steps, config.warmup_for(total_steps), config.min_lr
    )
