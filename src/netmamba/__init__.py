"""netmamba: NetMamba+ traffic classification from packet captures.

Data flow: capture -> flows -> features -> dataset -> model -> train/evaluate -> classify/serve.

The Python API, the same code paths as the command line:

    import netmamba

    model = netmamba.load_model()                       # the built-in default model
    result = netmamba.classify_captures(["capture.pcap"], model)
    result.flows                                        # pandas DataFrame, one row per flow
    out = model.predict(arrays)                         # prepared arrays -> labels, probabilities

    data = netmamba.prepare(["captures/"], "data/mine")  # a folder per class -> dataset
    netmamba.finetune("data/mine", "runs/mine", init="runs/pretrained")
    netmamba.load_model("runs/mine")

Names are imported on first use, so `import netmamba` stays light (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "load_model": ("netmamba.classify", "load_predictor"),
    "classify_captures": ("netmamba.classify", "classify_captures"),
    "Predictor": ("netmamba.inference", "Predictor"),
    "load_dataset": ("netmamba.dataset", "load_dataset"),
    "extract_captures": ("netmamba.dataset", "extract_captures"),
    "pretrain": ("netmamba.train", "pretrain"),
    "finetune": ("netmamba.train", "finetune"),
    "PretrainConfig": ("netmamba.train", "PretrainConfig"),
    "FinetuneConfig": ("netmamba.train", "FinetuneConfig"),
    "ModelConfig": ("netmamba.models", "ModelConfig"),
    "FeatureConfig": ("netmamba.features", "FeatureConfig"),
    "export_model": ("netmamba.export", "export_model"),
}

__all__ = ["__version__", "prepare", *_API]


def prepare(inputs: Any, output: Any, config: Any = None, **options: Any) -> Any:
    """Captures -> a prepared dataset folder (`netmamba prepare`); returns its summary result.
    `config` is a `netmamba.dataset.PrepareConfig` (default settings when None)."""
    from netmamba.dataset import PrepareConfig
    from netmamba.dataset import prepare as _prepare

    if isinstance(inputs, str | bytes) or hasattr(inputs, "__fspath__"):
        inputs = [inputs]
    return _prepare(list(inputs), output, config or PrepareConfig(), **options)


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'netmamba' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
