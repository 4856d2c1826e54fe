"""Self-supervised pre-training (SPEC section 4) on one or more prepared datasets, labelled or not.

    result = pretrain(["data/ndpi", "data/iot"], "runs/pre", PretrainConfig(preset="fast"))
    # runs/pre/checkpoint/  the pre-trained model (netmamba finetune --from runs/pre)

Defaults are the paper's recipe: batch 128, 150,000 steps (honoured exactly, not rounded up to
whole epochs), AdamW betas (0.9, 0.95), weight decay 0.05, lr = 1e-3 x batch / 256, 5% linear
warm-up then cosine decay. Data: every split of an unlabelled dataset; only the training split
of a labelled one (its test flows stay unseen), unless `splits` says otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netmamba.config import Config, ConfigError
from netmamba.dataset import DatasetError, load_dataset, read_manifest
from netmamba.models import PRESETS, ModelConfig, build_pretrainer
from netmamba.train.checkpoint import write_checkpoint_atomically
from netmamba.train.common import collective, dataset_arrays, model_config
from netmamba.train.data import BatchPlan
from netmamba.train.distributed import Distributed
from netmamba.train.distributed import setup as setup_distributed
from netmamba.train.loop import (
    LoopResult,
    StepLoss,
    Task,
    TrainConfig,
    read_metrics_log,
    run_loop,
)
from netmamba.train.optim import OptimConfig, build_optimizer, build_schedule
from netmamba.train.rundir import TrainError, check_run_dir, open_run_dir

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("auto", "train", "all")
PRESETS_FOR_CLI = tuple(PRESETS)


def _pretrain_train() -> TrainConfig:
    return TrainConfig(batch_size=128, steps=150_000, checkpoint_every=1000, log_every=50)


def _pretrain_optim() -> OptimConfig:
    return OptimConfig(
        base_lr=1e-3,
        min_lr=0.0,
        weight_decay=0.05,
        layer_decay=1.0,
        betas=(0.9, 0.95),
        warmup_fraction=0.05,
    )


@dataclass
class PretrainConfig(Config):
    """Settings of a pre-training run (the paper's recipe by default)."""

    preset: str = "paper"  # ModelConfig preset: paper | fast
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields to override
    train: TrainConfig = field(default_factory=_pretrain_train)
    optim: OptimConfig = field(default_factory=_pretrain_optim)
    splits: str = "auto"  # auto: all splits of unlabelled data, train of labelled; train; all

    def __post_init__(self) -> None:
        if self.splits not in SPLIT_CHOICES:
            raise ConfigError(f"PretrainConfig.splits must be one of {', '.join(SPLIT_CHOICES)}")
        if self.optim.layer_decay != 1.0:
            raise ConfigError("PretrainConfig.optim.layer_decay must be 1 (no layer-wise decay)")


@dataclass
class PretrainData:
    arrays: dict[str, np.ndarray]
    sources: list[dict[str, Any]]  # per dataset: path, splits read, flows, created
    flow: dict[str, Any]
    debias: dict[str, Any]
    data_features: dict[str, Any]


def load_pretraining_data(
    paths: list[str | Path], splits: str, preset: str, overrides: dict[str, Any]
) -> tuple[PretrainData, ModelConfig]:
    """Every dataset's flows fitted to one model configuration, concatenated."""
    if not paths:
        raise TrainError("pre-training needs at least one prepared dataset")
    datasets = []
    for path in paths:
        try:
            split = splits
            if split == "auto":
                split = "train" if read_manifest(path).get("labelled") else "all"
            ds = load_dataset(path, split, raw=False)
        except DatasetError as exc:
            raise TrainError(str(exc)) from None
        datasets.append(ds)
    modes = {ds.config.flow.mode for ds in datasets}
    if len(modes) > 1:
        raise TrainError(
            "the datasets mix uni-directional flows and bi-directional sessions: "
            + ", ".join(f"{ds.path} ({ds.config.flow.mode})" for ds in datasets)
            + "; prepare them with the same --mode"
        )
    config = model_config(preset, overrides, signed_sizes="bidirectional" in modes)
    parts, sources = [], []
    for ds in datasets:
        if len(ds) == 0:
            log.warning("%s: no flows in the splits read; skipped", ds.path)
            continue
        parts.append(dataset_arrays(ds, config, str(ds.path)))
        sources.append(
            {
                "path": str(ds.path),
                "splits": sorted(set(ds.meta["split"].tolist())),
                "flows": len(ds),
                "created": ds.manifest.get("created"),
                "labelled": bool(ds.manifest.get("labelled")),
            }
        )
    if not parts:
        raise TrainError("the datasets have no flows to pre-train on")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    debiases = {json_key(ds.config.debias.to_dict()) for ds in datasets}
    if len(debiases) > 1:
        log.warning("the datasets were de-biased with different switches; pre-training on all")
    first = datasets[0].config
    data = PretrainData(
        arrays,
        sources,
        first.flow.to_dict(),
        first.debias.to_dict(),
        datasets[0].feature_config.to_dict(),
    )
    return data, config


def json_key(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, sort_keys=True)


class PretrainTask(Task):
    def __init__(self, model: nn.Module, arrays: dict[str, np.ndarray], extra: dict) -> None:
        self.model = model
        self.arrays = arrays
        self.extra = extra
        self.sources = extra.get("datasets", [])

    def step_loss(
        self, forward: nn.Module, batch: dict[str, np.ndarray], generator: torch.Generator
    ) -> StepLoss:
        out = forward(batch, generator=generator)
        parts = {k: float(out[k].detach()) for k in ("loss_bytes", "loss_sizes", "loss_iats")}
        return StepLoss(out["loss"], float(len(batch["bytes"])), parts)

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra

    def fingerprint(self) -> dict[str, Any]:
        return {
            "flows": len(self.arrays["bytes"]),
            "datasets": [[s["path"], s["flows"], s["created"]] for s in self.sources],
        }


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    loop: LoopResult
    final_loss: float | None


def pretrain(
    datasets: list[str | Path],
    run_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    dist: Distributed | None = None,
) -> PretrainResult:
    """Pre-train a model on the datasets; the final model goes to RUN/checkpoint/."""
    config = config or PretrainConfig()
    run_dir = Path(run_dir)
    own_dist = dist is None
    dist = dist or setup_distributed(device, threads)
    try:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
        data, mconfig = load_pretraining_data(datasets, config.splits, config.preset, config.model)
        extra = {
            "features": mconfig.feature_config().to_dict(),
            "data_features": data.data_features,
            "flow": data.flow,
            "debias": data.debias,
            "datasets": data.sources,
            "pretrain": config.to_dict(),
        }
        record = {
            "kind": "pretrain",
            "compare": {"config": config.to_dict(), "datasets": [s["path"] for s in data.sources]},
            "config": config.to_dict(),
            "model": mconfig.to_dict(),
            "datasets": data.sources,
            "world_size": dist.world_size,
        }
        collective(dist, lambda: open_run_dir(run_dir, record, resume=resume, overwrite=overwrite))
        dist.barrier()
        torch.manual_seed(config.train.seed)
        model = build_pretrainer(mconfig).to(dist.device)
        tc = config.train
        plan = BatchPlan(len(data.arrays["bytes"]), tc.batch_size, tc.seed, dist.world_size)
        total = tc.steps or plan.steps_for_epochs(tc.epochs)
        optimizer = build_optimizer(model, config.optim, tc.batch_size)
        schedule = build_schedule(optimizer, config.optim, total, tc.batch_size)
        task = PretrainTask(model, data.arrays, extra)
        result = run_loop(
            task,
            tc,
            optimizer,
            schedule,
            plan,
            total,
            run_dir,
            dist,
            resume=resume,
            progress=progress,
            stop_after=stop_after,
        )
        final = run_dir / "checkpoint"
        rows = [r for r in read_metrics_log(run_dir) if r.get("kind") == "train"]
        final_loss = rows[-1]["loss"] if rows else None
        if dist.is_main:
            write_checkpoint_atomically(
                final, model, {**extra, "steps": total, "final_loss": final_loss}
            )
            from netmamba.evaluate.report import write_metrics_json

            epochs = [r for r in read_metrics_log(run_dir) if r.get("kind") == "epoch"]
            write_metrics_json(
                run_dir / "metrics.json",
                {
                    "kind": "pretrain",
                    "steps": total,
                    "epochs": total / plan.steps_per_epoch,
                    "flows": len(data.arrays["bytes"]),
                    "final_loss": final_loss,
                    "final_losses": rows[-1] if rows else None,
                    "history": epochs,
                    "seconds": result.seconds,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "config": config.to_dict(),
                    "model": mconfig.to_dict(),
                },
            )
        dist.barrier()
        if final_loss is not None and not math.isfinite(final_loss):
            raise TrainError(f"pre-training diverged (final loss {final_loss})")
        return PretrainResult(run_dir, final, result, final_loss)
    finally:
        if own_dist:
            dist.close()
