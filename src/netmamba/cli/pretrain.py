"""`netmamba pretrain`: self-supervised pre-training on prepared datasets (labels not needed)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

HELP = "pre-train a model on prepared datasets, without labels (masked reconstruction)"
EXAMPLE = """netmamba pretrain data/ndpi data/iot -o runs/pre --config fast --steps 20000

  the paper's recipe by default (--config paper: batch 128, 150,000 steps, AdamW 0.9/0.95,
  lr 1e-3 x batch / 256, warm-up + cosine); the step budget is honoured exactly.
  interrupted? run the same command again with --resume.
  several processes or GPUs: torchrun --nproc_per_node 2 -m netmamba pretrain ... (same options)
  any setting: --set train.batch_size=64 --set model.d_model=128 --set optim.base_lr=5e-4"""


def add_training_options(p: argparse.ArgumentParser, kind: str) -> None:
    """Options pretrain and finetune share."""
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--config",
        metavar="NAME|FILE",
        help="model preset (paper, fast) or a settings file (JSON/YAML, a "
        f"{'PretrainConfig' if kind == 'pretrain' else 'FinetuneConfig'}; see run.json of a run)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by its dotted name, e.g. train.batch_size=64, model.drop_path=0.2, "
        "optim.base_lr=1e-3 (repeatable)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, metavar="N", help="optimiser steps (exactly)")
    g.add_argument("--batch-size", type=int, metavar="B", help="global batch, all processes")
    g.add_argument("--lr", type=float, metavar="BLR", help="base lr (lr = BLR x batch / 256)")
    g.add_argument("--seed", type=int, help="data order, initialisation, masks (0)")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between resume states")
    g = p.add_argument_group("running")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR")
    g.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR")
    g.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 (default: a GPU if any)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads per process")


def settings(args: argparse.Namespace, config_class: Any, presets: tuple[str, ...]) -> Any:
    """The configuration: defaults or --config, then --set, then the explicit options."""
    from netmamba.cli import CommandError
    from netmamba.config import ConfigError

    data: dict[str, Any] = config_class().to_dict()
    if args.config:
        if args.config in presets:
            data["preset"] = args.config
        else:
            data = _deep_merge(data, _read_settings_file(args.config, presets))
    for assignment in args.set:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.seed=1")
        _assign(data, key.strip(), _parse_value(text))
    explicit = {
        "train.steps": args.steps,
        "train.batch_size": args.batch_size,
        "optim.base_lr": args.lr,
        "train.seed": args.seed,
        "train.grad_clip": args.grad_clip,
        "train.checkpoint_every": args.checkpoint_every,
        "train.bf16": True if args.bf16 else None,
    }
    for key, value in explicit.items():
        if value is not None:
            _assign(data, key, value)
    if args.steps is not None:
        _assign(data, "train.epochs", 0.0)
    try:
        return config_class.from_dict(data)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CommandError(f"settings: {exc}") from None


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    from netmamba.cli import CommandError

    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if (child is None and part == "model") or isinstance(child, dict):
            node = node.setdefault(part, {})
            continue
        raise CommandError(
            f"--set {key}: {'.'.join(parts[: i + 1])} is not a section of settings "
            f"(sections: {', '.join(k for k, v in data.items() if isinstance(v, dict))})"
        )
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if key == "model":  # overrides, not a full section: replace
            out[key] = dict(value or {})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_settings_file(path: str, presets: tuple[str, ...]) -> dict[str, Any]:
    import json

    import yaml

    from netmamba.cli import CommandError

    file = Path(path)
    if not file.is_file():
        raise CommandError(
            f"--config {path}: neither a preset ({', '.join(presets)}) nor a settings file"
        )
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CommandError(f"--config {path}: cannot read the settings ({exc})") from None
    if isinstance(data, dict) and "config" in data and "kind" in data:  # a run.json
        data = data["config"]
    if not isinstance(data, dict):
        raise CommandError(f"--config {path}: expected a mapping of settings")
    return data


def is_main_process() -> bool:
    """False on the other processes of a torchrun launch (only rank 0 prints)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="prepared dataset folders")
    add_training_options(p, "pretrain")
    p.add_argument(
        "--splits",
        choices=("auto", "train", "all"),
        help="splits read: auto (default) = all of unlabelled datasets, train of labelled ones",
    )


def run(args: argparse.Namespace) -> int:
    from netmamba.cli import CommandError
    from netmamba.models.weights import CheckpointError
    from netmamba.train.pretrain import PRESETS_FOR_CLI, PretrainConfig, pretrain
    from netmamba.train.rundir import TrainError

    config = settings(args, PretrainConfig, PRESETS_FOR_CLI)
    if args.splits:
        config.splits = args.splits
    started = time.perf_counter()
    try:
        result = pretrain(
            args.datasets,
            args.output,
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            device=args.device,
            threads=args.threads,
            progress=not args.quiet,
        )
    except (TrainError, CheckpointError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not is_main_process():
        return 0
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    print(
        f"pre-trained {result.loop.total_steps} steps (final loss {loss}) in "
        f"{time.perf_counter() - started:.1f} s; model: {result.checkpoint}"
    )
    return 0
