"""Where models are: built-in names, checkpoint folders and run folders (no torch imported).

    folder = resolve_model("default")      # a built-in model shipped in the package
    folder = resolve_model("runs/iot")     # a run folder -> its best/ (or checkpoint/) folder
    meta = read_checkpoint_meta(folder)    # checkpoint.json as a dict

The online service's packet process reads checkpoints through this module, so it never loads
torch; `netmamba.inference.Predictor.load` resolves names the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

META_FILE = "checkpoint.json"
CHECKPOINT_FORMAT = "netmamba-checkpoint"
CHECKPOINT_VERSION = 1  # the newest checkpoint format this netmamba reads
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "default"
# Built-in models by name; each is a checkpoint folder inside the package.
BUILTIN_MODELS = {DEFAULT_MODEL: PACKAGE_DIR / "default_model"}


class CheckpointError(ValueError):
    """A folder or file is not a usable netmamba checkpoint; the message says what to do."""


class ModelNotFoundError(CheckpointError):
    """A model name or path that names no checkpoint."""


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder named by `path`: the folder itself, or in a run folder its best
    fine-tuned model (`best/`) or its final pre-trained one (`checkpoint/`)."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    for name in ("best", "checkpoint"):
        if (path / name / META_FILE).is_file():
            return path / name
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such checkpoint or run folder")
    if (path / "last" / META_FILE).is_file():
        raise CheckpointError(
            f"{path}: the run has not finished (only last/ is there); resume it with --resume, "
            f"or use {path / 'last'} as it stands"
        )
    raise CheckpointError(
        f"{path}: neither a checkpoint folder ({META_FILE}) nor a run folder with best/ or "
        "checkpoint/"
    )


def resolve_model(model: str | Path) -> Path:
    """The checkpoint folder of a built-in model name, a checkpoint folder or a run folder."""
    name = str(model)
    if name in BUILTIN_MODELS:
        folder = BUILTIN_MODELS[name]
        if not (folder / META_FILE).is_file():
            raise ModelNotFoundError(
                f"the built-in model {name!r} is not installed in {folder}; reinstall netmamba "
                "or pass --model PATH to a fine-tuned checkpoint"
            )
        return folder
    if not Path(model).exists():
        names = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelNotFoundError(
            f"{model}: no such model; give a built-in name ({names}) or the path of a "
            "fine-tuned checkpoint or run folder"
        )
    return resolve_checkpoint(model)


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    """checkpoint.json of a checkpoint folder, checked to be one of ours."""
    folder = Path(folder)
    path = folder / META_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (it does not exist)")
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {META_FILE}; is this a netmamba checkpoint folder?")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not a netmamba checkpoint (format {found!r})")
    if meta.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer netmamba (format version {meta['version']}); upgrade"
        )
    return meta


def protocol_filter_of(meta: dict[str, Any]) -> str:
    """The protocol filter of a model's training data ("none" when not recorded): flows it
    leaves out are of protocols the model never saw."""
    cleaning = meta.get("cleaning") or {}
    return str(cleaning.get("protocol_filter", "none"))


def min_packets_of(meta: dict[str, Any]) -> int:
    """The fewest packets a flow had in a model's training data (1 when not recorded)."""
    cleaning = meta.get("cleaning") or {}
    return max(1, int(cleaning.get("min_packets", 1)))
