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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netmamba.debias import DebiasConfig
from netmamba.features import ARRAY_DTYPES, ARRAY_NAMES, FeatureConfig, array_shapes
from netmamba.flows import FlowConfig
from netmamba.registry import (
    DEFAULT_MODEL,
    META_FILE,
    CheckpointError,
    min_packets_of,
    protocol_filter_of,
    read_checkpoint_meta,
    resolve_model,
)
from netmamba.serve.batcher import PredictFn
from netmamba.serve.service import ModelSpec


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
    min_packets: int  # the fewest packets a training flow had (registry.min_packets_of)
    protocol_filter: str = "none"  # the training data's (registry.protocol_filter_of)

    @property
    def ready_packets(self) -> int:
        """Packets after which a flow has everything the model reads: max(M_b, M_seq)."""
        f = self.model_features
        return max(f.n_packets, f.seq_len, self.min_packets)

    def array_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Shapes and dtypes of one flow's arrays, in the training data's geometry."""
        shapes = array_shapes(self.data_features)
        return {k: (shapes[k], np.dtype(ARRAY_DTYPES[k])) for k in ARRAY_NAMES}


def resolve_checkpoint_folder(model: str | Path) -> Path:
    """The checkpoint folder a built-in name, a checkpoint folder or a run folder names (the
    rules of `netmamba.registry`, shared with `netmamba classify`), or ModelError."""
    try:
        return resolve_model(model)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None


def checkpoint_info(model: str | Path = DEFAULT_MODEL) -> CheckpointInfo:
    """Read what the service needs from the checkpoint `model` names (ModelError if unusable)."""
    folder = resolve_checkpoint_folder(model)
    path = folder / META_FILE
    try:
        meta = read_checkpoint_meta(folder)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
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
    return CheckpointInfo(
        path=folder,
        name=str(model),
        labels=labels,
        flow=flow,
        data_features=data_features,
        model_features=model_features,
        debias=debias,
        min_packets=min_packets_of(meta),
        protocol_filter=protocol_filter_of(meta),
    )


# -- the worker side ------------------------------------------------------------------------------


def distinct_rows(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the rows of the first flow of each distinct set of arrays, and for
    every flow the index of its set in `first`, so that a flow's result is results[inverse]."""
    n = len(next(iter(arrays.values())))
    parts = [np.ascontiguousarray(arrays[k]).reshape(n, -1).view(np.uint8) for k in sorted(arrays)]
    rows = np.ascontiguousarray(np.concatenate(parts, axis=1))
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


CHUNK_ACTIVATIONS = 680_000  # tokens x inner width per model call


def model_chunk(n_tokens: int, d_inner: int) -> int:
    """Flows per model call: small calls keep more of their activations in cache. Measured on
    the 2-core EPYC of the benchmarks, one thread, machine otherwise idle: the `fast` model
    (83 tokens, E = 128) computed 1,742 flows/s in calls of 48 flows and 1,195 in calls of
    256; the `paper` one (443 tokens, E = 512) 36 in calls of 4 and 20 in calls of 256 (under
    load from other processes the difference shrinks into the noise). This gives 64 and 4."""
    return max(4, min(256, round(CHUNK_ACTIVATIONS / (n_tokens * d_inner))))


def load_predict(
    path: str, threads: int | None = None, chunk: int | None = None, device: str | None = None
) -> PredictFn:
    """Build the Predictor of checkpoint `path` (in the worker) and return its predict call:
    arrays -> {"probs": (B, C) calibrated probabilities, "unknown": (B,) bool}.

    Why it is fast on a CPU:
    - identical flows of a batch are computed once: after de-biasing many short flows are the
      same bytes (a SYN to a closed port, a retried query: a fifth of the nDPI captures' flows);
    - the batch is cut into calls of `chunk` flows (`model_chunk`), run by `threads` threads
      of their own, each a single-threaded model call, rather than every operation split over
      an OpenMP team: no barrier per operation, so a thread that loses its core to the packet
      process delays one call, not every step of all of them (measured with other processes
      running: a spinning OpenMP team of 2 computed 50 to 280 flows/s where one thread
      computed 700 to 900).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime
    import torch

    from netmamba.inference import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.load(path, device=device, threads=1)
    threads = max(1, threads or 1)
    config = predictor.config
    chunk = chunk or model_chunk(config.n_tokens, config.d_inner)
    if predictor.device.type != "cpu":  # a GPU takes the whole batch at once
        threads, chunk = 1, 1 << 30
    pool = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(threads, "netmamba-model", torch.set_num_threads, (1,))

    def run(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return predictor.predict(part, batch_size=len(part["bytes"]))

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first, inverse = distinct_rows(arrays)
        arrays = {k: v[first] for k, v in arrays.items()}  # one of each, in `inverse`'s order
        n = len(first)
        size = min(chunk, -(-n // threads))  # every thread gets a share of a small batch
        parts = [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]
        outs = (
            list(pool.map(run, parts))
            if pool is not None and len(parts) > 1
            else [run(part) for part in parts]
        )
        probs = np.concatenate([o["probs"] for o in outs])
        unknown = np.concatenate([o["unknown"] for o in outs])
        return {"probs": probs[inverse], "unknown": unknown[inverse]}

    return predict


def model_spec(
    info: CheckpointInfo,
    threads: int | None = None,
    chunk: int | None = None,
    device: str | None = None,
) -> ModelSpec:
    """The ModelSpec of a checkpoint: its labels, the arrays the flow table makes, and a
    picklable factory that loads it in the worker (see `load_predict`)."""
    factory = functools.partial(load_predict, str(info.path), threads, chunk, device)
    return ModelSpec(info.name, info.labels, info.array_spec(), factory)
