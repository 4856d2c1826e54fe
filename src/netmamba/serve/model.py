"""The model of the service: what the packet process needs to know about a checkpoint, and the
picklable factory that loads it as a `netmamba.inference.Predictor` in the inference worker.

    info = checkpoint_info("runs/iot")                    # checkpoint.json only: no torch here
    spec = model_spec(info, threads=1)                    # ModelSpec for Service
    table = MeterFlowTable(info.flow, info.data_features, info.debias, ...)

The packet process (capture, flow table, HTTP) never imports torch: it reads checkpoint.json for
the label names and for the flow, feature and de-biasing settings the model was trained with,
which the flow table must use so that a flow gets the same arrays, hence the same label, as
`netmamba classify` gives it. The worker process builds the Predictor, which crops the arrays
to the model's own geometry exactly as `classify` does.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netmamba.debias import DebiasConfig
from netmamba.features import ARRAY_DTYPES, ARRAY_NAMES, FeatureConfig, array_shapes
from netmamba.flows import FlowConfig
from netmamba.serve.batcher import PredictFn
from netmamba.serve.service import ModelSpec

META_FILE = "checkpoint.json"  # netmamba.models.weights.META_FILE (that module imports torch)
DEFAULT_MODEL = "default"


class ModelError(ValueError):
    """The model named cannot be served; the message says why and what to give instead."""


@dataclass
class CheckpointInfo:
    """What the packet process needs from a fine-tuned checkpoint."""

    path: Path  # the checkpoint folder (checkpoint.json + model.safetensors)
    name: str  # as the user named it (built-in name or path)
    labels: list[str]
    flow: FlowConfig  # how the training data assembled flows
    data_features: FeatureConfig  # the geometry of the training data's arrays
    model_features: FeatureConfig  # the geometry the model reads (<= data_features)
    debias: DebiasConfig
    min_packets: int  # the fewest packets a training flow had (netmamba.classify.min_packets_of)

    @property
    def ready_packets(self) -> int:
        """Packets after which a flow has everything the model reads: max(M_b, M_seq)."""
        f = self.model_features
        return max(f.n_packets, f.seq_len, self.min_packets)

    def array_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Shapes and dtypes of one flow's arrays, in the training data's geometry."""
        shapes = array_shapes(self.data_features)
        return {k: (shapes[k], np.dtype(ARRAY_DTYPES[k])) for k in ARRAY_NAMES}


def _builtin_folder(name: str) -> Path | None:
    # netmamba.classify.BUILTIN_MODELS, which imports torch with the Predictor; a test checks
    # that both name the same folders.
    if name == DEFAULT_MODEL:
        return Path(__file__).resolve().parents[1] / "default_model"
    return None


def resolve_checkpoint_folder(model: str | Path) -> Path:
    """The checkpoint folder a built-in name, a checkpoint folder or a run folder names.

    Same rules as `netmamba.classify.resolve_model` + `netmamba.inference.resolve_checkpoint`;
    for anything those reject, their own error is raised (as ModelError)."""
    builtin = _builtin_folder(str(model))
    path = builtin if builtin is not None else Path(model)
    for folder in (path, path / "best", path / "checkpoint"):
        if (folder / META_FILE).is_file():
            return folder
    # Not found: the canonical messages (this imports torch, on the error path only).
    from netmamba.classify import ModelNotFoundError, resolve_model
    from netmamba.inference import resolve_checkpoint
    from netmamba.models.weights import CheckpointError

    try:
        resolve_checkpoint(resolve_model(model))
    except (ModelNotFoundError, CheckpointError) as exc:
        raise ModelError(str(exc)) from None
    raise ModelError(f"{model}: no checkpoint found")  # pragma: no cover - resolved above


def checkpoint_info(model: str | Path = DEFAULT_MODEL) -> CheckpointInfo:
    """Read what the service needs from the checkpoint `model` names (ModelError if unusable)."""
    folder = resolve_checkpoint_folder(model)
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read it ({exc})") from None
    if meta.get("format") != "netmamba-checkpoint":
        raise ModelError(f"{path}: not a netmamba checkpoint (format {meta.get('format')!r})")
    if meta.get("kind") != "classifier":
        raise ModelError(
            f"{folder}: a pre-training checkpoint has no classification head; fine-tune it "
            f"first (netmamba finetune DATASET --from {model})"
        )
    geometry = ("n_packets", "header_bytes", "payload_bytes", "seq_len", "mtu")
    try:
        model_dict = meta.get("model") or {}
        model_features = FeatureConfig.from_dict(
            meta.get("features") or {k: model_dict[k] for k in geometry if k in model_dict}
        )
        data_features = (
            FeatureConfig.from_dict(meta["data_features"])
            if meta.get("data_features")
            else model_features
        )
        flow = FlowConfig.from_dict(meta.get("flow") or {})
        debias = DebiasConfig.from_dict(meta["debias"]) if meta.get("debias") else DebiasConfig()
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{path}: unusable settings ({exc})") from None
    num_classes = int(meta.get("num_classes") or 0)
    labels = [str(x) for x in meta.get("label_names") or range(num_classes)]
    if not labels or (num_classes and len(labels) != num_classes):
        raise ModelError(f"{path}: {len(labels)} label names for {num_classes} classes")
    cleaning = meta.get("cleaning") or {}
    return CheckpointInfo(
        path=folder,
        name=str(model),
        labels=labels,
        flow=flow,
        data_features=data_features,
        model_features=model_features,
        debias=debias,
        min_packets=max(1, int(cleaning.get("min_packets", 1))),
    )


# -- the worker side ------------------------------------------------------------------------------


def load_predict(
    path: str, threads: int | None = None, batch_size: int = 256, device: str | None = None
) -> PredictFn:
    """Build the Predictor of checkpoint `path` (in the worker) and return its predict call:
    arrays -> {"probs": (B, C) calibrated probabilities, "unknown": (B,) bool}."""
    import torch

    from netmamba.inference import Predictor

    if threads:
        torch.set_num_threads(threads)
    predictor = Predictor.load(path, device=device, threads=threads)

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = predictor.predict(arrays, batch_size=batch_size)
        return {"probs": out["probs"], "unknown": out["unknown"]}

    return predict


def model_spec(
    info: CheckpointInfo,
    threads: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
) -> ModelSpec:
    """The ModelSpec of a checkpoint: its labels, the arrays the flow table makes, and a
    picklable factory that loads it in the worker."""
    factory = functools.partial(load_predict, str(info.path), threads, batch_size, device)
    return ModelSpec(info.name, info.labels, info.array_spec(), factory)
