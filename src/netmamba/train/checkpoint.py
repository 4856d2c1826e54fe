"""Training state for `--resume`, written atomically: a crash at any moment leaves the last
complete state readable.

A state folder (`RUN/last/`) is a model checkpoint (`model.safetensors` + `checkpoint.json`,
see `netmamba.models.weights`) plus

    train_state.safetensors   optimiser moments and step counts (`optimizer.<param>.<key>`),
                              the torch random generator states (`rng.torch`, `rng.cuda.<i>`)
    train_state.json          step, epoch, the schedule's state, the optimiser's groups, the
                              best validation score so far, the data fingerprint, history

Atomic replacement: everything is written to a hidden temporary folder beside the target,
flushed to disk, then the old folder is renamed away and the new one into place. A crash
between those two renames leaves only `.<name>.old`, which `find_state` falls back to.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from netmamba.models.weights import CheckpointError, save_checkpoint

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` at `target`, replacing what was there."""
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def temporary_folder(target: Path) -> Path:
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_checkpoint_atomically(
    target: str | Path, model: torch.nn.Module, extra: dict[str, Any] | None = None
) -> Path:
    """`save_checkpoint` into a temporary folder, then renamed into place."""
    target = Path(target)
    tmp = temporary_folder(target)
    try:
        save_checkpoint(tmp, model, extra)  # type: ignore[arg-type]
        _fsync_tree(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def find_state(folder: str | Path) -> Path | None:
    """The state folder to resume from: `folder`, or what a crash mid-replacement left."""
    folder = Path(folder)
    if (folder / STATE_JSON).is_file():
        return folder
    old = folder.parent / f".{folder.name}.old"
    if (old / STATE_JSON).is_file():
        return old
    return None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def save_training_state(
    target: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Model, optimiser, random generators and `state` (JSON) to `target`, atomically."""
    target = Path(target)
    tmp = temporary_folder(target)
    try:
        save_checkpoint(tmp, model, extra)  # type: ignore[arg-type]
        tensors, groups = _optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / STATE_TENSORS))
        record = dict(state)
        record["optimizer_groups"] = groups
        (tmp / STATE_JSON).write_text(json.dumps(record, indent=1) + "\n")
        _fsync_tree(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_training_state(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model weights, optimiser state and random generators from a state folder;
    returns the JSON state (step, schedule, best score, ...)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot read the training state ({exc})") from exc
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{folder}: the saved model does not match this run's model (missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}); resume with "
            "the settings the run was started with"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    groups = record.pop("optimizer_groups")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{folder}: the saved optimiser does not fit this run ({exc}); resume with the "
            "settings the run was started with"
        ) from exc
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return record
