"""Pieces pretrain and finetune share: model settings from presets, data fitted to the model,
errors raised on every process alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from netmamba.config import ConfigError
from netmamba.dataset import FlowDataset
from netmamba.inference import fit_arrays
from netmamba.models import GeometryError, ModelConfig
from netmamba.train.distributed import Distributed
from netmamba.train.rundir import TrainError

T = TypeVar("T")


def model_config(preset: str, overrides: dict[str, Any], signed_sizes: bool) -> ModelConfig:
    """`ModelConfig.preset(preset, **overrides)`; sizes signed by direction when the data is
    bi-directional, unless the overrides say otherwise."""
    fields = dict(overrides)
    fields.setdefault("signed_sizes", signed_sizes)
    try:
        return ModelConfig.preset(preset, **fields)
    except (ConfigError, TypeError) as exc:
        raise TrainError(f"model settings: {exc}") from None


def dataset_arrays(dataset: FlowDataset, model: ModelConfig, what: str) -> dict:
    """The dataset's arrays with the model's geometry (cropped when the data is larger)."""
    signed = dataset.config.flow.bidirectional
    if signed and not model.signed_sizes:
        raise TrainError(
            f"{what}: the flows are bi-directional sessions (sizes signed by direction) but the "
            "model reads unsigned sizes; use a model with signed_sizes=true (the default for "
            "such data when training from scratch)"
        )
    try:
        return fit_arrays(dataset.arrays, model, dataset.feature_config)
    except GeometryError as exc:
        raise TrainError(f"{what}: {exc}") from None


def collective(dist: Distributed, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0; a TrainError there is raised on every process (none waits forever)."""
    message, value = None, None
    if dist.is_main:
        try:
            value = fn()
        except TrainError as exc:
            message = str(exc)
    message = dist.broadcast_object(message)
    if message is not None:
        raise TrainError(message)
    return value  # type: ignore[return-value]
