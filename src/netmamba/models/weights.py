"""Checkpoints: a folder with `model.safetensors` (weights, never pickle) and `checkpoint.json`
(the model configuration, what the model is, and whatever the caller adds: label names,
feature / flow / de-biasing configurations, the training configuration).

Also: loading a pre-trained encoder into a classifier (`load_encoder`), and importing the
authors' released NetMamba+ checkpoint (`import_authors_checkpoint`, a torch state dict read
with `weights_only=True`) under our parameter names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from netmamba.models.classifier import Classifier
from netmamba.models.config import ModelConfig
from netmamba.models.pretrain import Pretrainer
from netmamba.registry import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    META_FILE,
    CheckpointError,
    read_checkpoint_meta,
)

WEIGHTS_FILE = "model.safetensors"
FORMAT = CHECKPOINT_FORMAT
FORMAT_VERSION = CHECKPOINT_VERSION


@dataclass
class Checkpoint:
    model: Classifier | Pretrainer
    config: ModelConfig
    extra: dict[str, Any]  # everything the saver passed besides the model


@dataclass
class LoadReport:
    """What a partial load did: parameters loaded, ours left as initialised, theirs unused."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"kept initial values for {len(self.missing)}: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"ignored {len(self.unexpected)}: {', '.join(self.unexpected)}")
        return "; ".join(lines)


def _kind(model: nn.Module) -> str:
    if isinstance(model, Classifier):
        return "classifier"
    if isinstance(model, Pretrainer):
        return "pretrainer"
    raise TypeError(f"can only save a Classifier or a Pretrainer, not {type(model).__name__}")


def save_checkpoint(
    folder: str | Path, model: Classifier | Pretrainer, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model` and `extra` (JSON-serialisable) to `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = _kind(model)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    # one metadata key: safetensors writes several in a varying order, and the same weights
    # should give the same file (the built-in model's checksum must be reproducible)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"kind": kind})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "num_classes": getattr(model, "num_classes", None),
        "model": model.config.to_dict(),
    }
    reserved = sorted(set(meta) & set(extra or {}))
    if reserved:
        raise ValueError(f"checkpoint extra keys {', '.join(reserved)} are reserved")
    meta.update(extra or {})
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as exc:
        raise ValueError(f"checkpoint extra data must be JSON-serialisable: {exc}") from exc
    (folder / META_FILE).write_text(text + "\n")
    return folder


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """checkpoint.json of a checkpoint folder, checked (see `netmamba.registry`)."""
    return read_checkpoint_meta(folder)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from exc


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """The model saved in `folder` (rebuilt from its configuration), with the saved extras."""
    folder = Path(folder)
    meta = read_metadata(folder)
    config = ModelConfig.from_dict(meta["model"])
    if meta["kind"] == "classifier":
        model: Classifier | Pretrainer = Classifier(config, int(meta["num_classes"]))
    elif meta["kind"] == "pretrainer":
        model = Pretrainer(config)
    else:
        raise CheckpointError(f"{folder / META_FILE}: unknown model kind {meta['kind']!r}")
    state = _read_weights(folder)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} does not match its configuration: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "kind", "model")}
    extra.pop("num_classes", None)
    return Checkpoint(model.to(device), config, extra)


def load_encoder(
    model: Classifier | Pretrainer,
    source: str | Path | nn.Module | dict[str, torch.Tensor],
) -> LoadReport:
    """Copy the encoder weights of `source` (a checkpoint folder, a model, or a state dict with
    `encoder.` keys) into `model.encoder`; everything else keeps its values.

    Shapes must agree (same D, depth, geometry); a mismatch raises CheckpointError naming it."""
    if isinstance(source, (str, Path)):
        state = _read_weights(Path(source))
    elif isinstance(source, nn.Module):
        state = source.state_dict()
    else:
        state = source
    prefix = "encoder."
    theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    ours = model.encoder.state_dict()
    for name, tensor in theirs.items():
        if name in ours and ours[name].shape != tensor.shape:
            raise CheckpointError(
                f"encoder parameter {name} has shape {tuple(tensor.shape)} in the source but "
                f"{tuple(ours[name].shape)} in the model; the two configurations differ"
            )
    result = model.encoder.load_state_dict(theirs, strict=False)
    return LoadReport(
        loaded=sorted(prefix + k for k in theirs if k in ours),
        missing=sorted(prefix + k for k in result.missing_keys),
        unexpected=sorted(prefix + k for k in result.unexpected_keys),
    )


# ---- the authors' checkpoint ------------------------------------------------------------------

_MODALITY = {"size": "sizes", "iat": "iats", "byte": "bytes"}

# (their name pattern, our name template, shape change) in the order tried
_RULES: list[tuple[str, str, str | None]] = [
    (r"byte_embed\.proj\.weight", "encoder.byte_embed.weight", "flatten"),
    (r"byte_embed\.proj\.bias", "encoder.byte_embed.bias", None),
    (r"(size|iat|byte)_cls_token", "encoder.cls_tokens.{m}", "vector"),
    (r"(size|iat|byte)_indicator", "encoder.indicators.{m}", "vector"),
    (r"pos_embed", "encoder.pos_embed", "squeeze"),
    (
        r"encoder_blocks\.(\d+)\.(mixer\.(?:in_proj\.weight|conv1d\.weight|conv1d\.bias|x_proj\.weight"
        r"|dt_proj\.weight|dt_proj\.bias|A_log|D|out_proj\.weight)|norm\.weight)",
        "encoder.blocks.{0}.{1}",
        None,
    ),
    (r"norm_f\.weight", "encoder.norm.weight", None),
    (r"head\.(weight|bias)", "head.{0}", None),
    (r"dense\.(0|3)\.(weight|bias)", "fuse.{0}.{1}", None),
    (r"byte_decoder_embed\.(weight|bias)", "byte_decoder.embed.{0}", None),
    (r"byte_mask_token", "byte_decoder.mask_token", "vector"),
    (r"byte_decoder_pos_embed", "byte_decoder.pos_embed", "squeeze"),
    (
        r"byte_decoder_blocks\.(\d+)\.(mixer\.(?:in_proj\.weight|conv1d\.weight|conv1d\.bias|x_proj"
        r"\.weight|dt_proj\.weight|dt_proj\.bias|A_log|D|out_proj\.weight)|norm\.weight)",
        "byte_decoder.blocks.{0}.{1}",
        None,
    ),
    (r"decoder_norm_f\.weight", "byte_decoder.norm.weight", None),
    (r"byte_decoder_pred\.(weight|bias)", "byte_decoder.pred.{0}", None),
    (r"size_decoder_pred\.(weight|bias)", "size_head.{0}", "size_classes"),
    (r"iat_decoder_pred\.(weight|bias)", "iat_head.{0}", None),
]


@dataclass
class ImportedCheckpoint:
    model: Classifier | Pretrainer
    config: ModelConfig
    mapped: dict[str, str]  # their name -> ours
    unmapped: list[str]  # their names we have no place for
    missing: list[str]  # our parameters left as initialised

    def summary(self) -> str:
        lines = [f"mapped {len(self.mapped)} of the checkpoint's tensors onto ours"]
        if self.unmapped:
            lines.append(f"did not map {len(self.unmapped)}: {', '.join(self.unmapped)}")
        if self.missing:
            lines.append(
                f"left {len(self.missing)} of ours as initialised: {', '.join(self.missing)}"
            )
        return "; ".join(lines)


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    # argparse.Namespace (the training arguments saved next to the weights) only sets
    # attributes; allowing it keeps weights_only loading, which never runs pickled code.
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.4
    allow = safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()
    try:
        with allow:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read it as a torch checkpoint with weights_only=True ({exc})"
        ) from exc
    if isinstance(raw, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _infer_config(state: dict[str, torch.Tensor], overrides: dict[str, Any]) -> ModelConfig:
    """Our configuration of the authors' model, read from its tensor shapes."""
    if "pos_embed" not in state or "encoder_blocks.0.mixer.A_log" not in state:
        raise CheckpointError(
            "not a NetMamba+ (fuse3_mamba) checkpoint: no pos_embed / encoder_blocks.*.mixer.A_log"
        )
    D = state["pos_embed"].shape[-1]
    tokens = state["pos_embed"].shape[1]
    E, N = state["encoder_blocks.0.mixer.A_log"].shape
    depth = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(r"encoder_blocks\.(\d+)\.", k))
    )
    stride = state["byte_embed.proj.weight"].shape[-1] if "byte_embed.proj.weight" in state else 4
    fields: dict[str, Any] = {
        "backbone": "mamba",
        "d_model": D,
        "depth": depth,
        "d_state": N,
        "expand": E // D,
        "d_conv": state["encoder_blocks.0.mixer.conv1d.weight"].shape[-1],
        "dt_rank": state["encoder_blocks.0.mixer.dt_proj.weight"].shape[1],
        "stride": stride,
        "fusion": "concat" if "dense.0.weight" in state else "sum",
        "head_bias": "head.bias" in state,
    }
    size_rows = state.get("size_decoder_pred.weight")
    if size_rows is not None and size_rows.shape[0] > 2000:  # 3003 = 2 * MTU + 3: signed sizes
        fields.update(signed_sizes=True, size_offset=1500)
    if "byte_decoder_embed.weight" in state:
        fields["decoder_dim"] = state["byte_decoder_embed.weight"].shape[0]
        fields["decoder_depth"] = 1 + max(
            int(m.group(1)) for k in state if (m := re.match(r"byte_decoder_blocks\.(\d+)\.", k))
        )
    fields.update(overrides)
    base = ModelConfig(**{k: v for k, v in fields.items() if k in ModelConfig.__dataclass_fields__})
    if "seq_len" not in overrides:  # tokens = byte tokens + 2 M_seq + 3
        seq_len = (tokens - base.n_byte_tokens - 3) // 2
        if seq_len <= 0 or base.n_byte_tokens + 2 * seq_len + 3 != tokens:
            raise CheckpointError(
                f"cannot fit {tokens} positions to the token layout with {base.n_byte_tokens} byte "
                "tokens; pass the geometry (n_packets, header_bytes, payload_bytes, seq_len)"
            )
        base = base.replace(seq_len=seq_len)
    return base


def import_authors_checkpoint(
    path: str | Path, num_classes: int | None = None, **config_overrides: Any
) -> ImportedCheckpoint:
    """Our model carrying the weights of the authors' `fuse3_mamba.pth` (or a NetMamba+ state
    dict of the same layout), with a report of what mapped.

    A pre-training checkpoint (decoders present) gives a Pretrainer unless `num_classes` asks
    for a classifier; a fine-tuned one gives a Classifier with its own number of classes (or
    `num_classes`, in which case a head of another size is left as initialised). The geometry is
    read from the tensor shapes (M_seq from the positional embeddings); `config_overrides` set
    anything else (their code pads and never masks: mask_padding=False reproduces that).
    """
    state = _read_torch_state(Path(path))
    config = _infer_config(state, config_overrides)
    head = state.get("head.weight")
    if num_classes is None and head is not None:
        num_classes = head.shape[0]
    model: Classifier | Pretrainer = (
        Classifier(config, num_classes) if num_classes is not None else Pretrainer(config)
    )
    ours = model.state_dict()
    mapped, unmapped, new_state = {}, [], {}
    for name, tensor in state.items():
        target, value = _map_name(name, tensor, config)
        if target is None or target not in ours or ours[target].shape != value.shape:
            unmapped.append(name)
            continue
        mapped[name] = target
        new_state[target] = value.to(ours[target].dtype)
    model.load_state_dict(new_state, strict=False)
    missing = sorted(set(ours) - set(new_state))
    return ImportedCheckpoint(model, config, mapped, sorted(unmapped), missing)


def _map_name(
    name: str, tensor: torch.Tensor, config: ModelConfig
) -> tuple[str | None, torch.Tensor]:
    for pattern, template, change in _RULES:
        match = re.fullmatch(pattern, name)
        if not match:
            continue
        groups = match.groups()
        if "{m}" in template:
            target = template.format(m=_MODALITY[groups[0]])
        else:
            target = template.format(*groups)
        if change == "flatten":  # Conv1d (D, 1, L_s) -> Linear (D, L_s)
            tensor = tensor.reshape(tensor.shape[0], -1)
        elif change == "vector":  # (1, 1, D) -> (D,)
            tensor = tensor.reshape(-1)
        elif change == "squeeze":  # (1, T, D) -> (T, D)
            tensor = tensor.reshape(tensor.shape[-2], tensor.shape[-1])
        elif change == "size_classes":  # their extra PAD and MASK classes come last: drop them
            tensor = tensor[: config.size_classes]
        return target, tensor
    return None, tensor
