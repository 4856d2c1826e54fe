"""Export a fine-tuned classifier for deployment without netmamba's model and training code.

    export_model("runs/iot", "iot.onnx")          # ONNX, run by onnxruntime (no torch needed)
    export_model("runs/iot", "iot.pt2")           # torch.export program (torch, no netmamba)

The exported graph takes the six sample arrays of `netmamba.features` (as int32 / float32 /
bool, see `INPUT_DTYPES`) and returns, per flow, the calibrated class probabilities (logit scale
and temperature folded in), the unknown-class score and the unknown flag of the checkpoint's
detector: exactly what `netmamba.inference.Predictor.predict` computes. A JSON file beside it
(`<name>.json`) holds the label names, the input geometry and the flow / feature / de-biasing
settings the arrays must be made with.

The graph is traced with netmamba's pure-PyTorch scan and convolution (the native kernels are
ctypes calls that a tracer cannot see), so the exported model runs wherever ONNX Runtime or
PyTorch does (TorchScript is not offered: PyTorch deprecates it for torch.export).
`verify_export` compares its outputs with the Predictor's on given arrays.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netmamba.evaluate.ood import SCORE_KINDS
from netmamba.features import ARRAY_NAMES
from netmamba.inference import Predictor

FORMATS = ("onnx", "pt2")
# Exported inputs use types every runtime has (ONNX Runtime lacks some uint16/int16 kernels).
INPUT_DTYPES = {
    "bytes": np.uint8,
    "header_lens": np.int32,
    "payload_lens": np.int32,
    "sizes": np.int32,
    "iats": np.float32,
    "seq_mask": np.bool_,
}
OUTPUT_NAMES = ("probs", "unknown_score", "unknown")


class ExportError(RuntimeError):
    """The model cannot be exported in the asked format (a missing package, an unknown format)."""


class CalibratedClassifier(nn.Module):
    """The classifier with its logit scale, temperature and unknown detector folded in."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        detector = predictor.detector
        if detector.score not in SCORE_KINDS:
            raise ExportError(f"unknown score kind {detector.score!r}")
        self.model = predictor.model
        self.scale = float(predictor.logit_scale)
        self.temperature = float(detector.temperature)
        self.score_kind = detector.score
        self.threshold = float(detector.threshold)

    def forward(
        self,
        bytes: torch.Tensor,  # (B, M_b * (N_h + N_p)) uint8
        header_lens: torch.Tensor,  # (B, M_b) int32
        payload_lens: torch.Tensor,  # (B, M_b) int32
        sizes: torch.Tensor,  # (B, M_seq) int32
        iats: torch.Tensor,  # (B, M_seq) float32
        seq_mask: torch.Tensor,  # (B, M_seq) bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = {
            "bytes": bytes,
            "header_lens": header_lens.long(),
            "payload_lens": payload_lens.long(),
            "sizes": sizes.float(),
            "iats": iats.float(),
            "seq_mask": seq_mask,
        }
        z = self.model(batch).float() * self.scale / self.temperature  # (B, C)
        log_p = torch.log_softmax(z, dim=-1)
        probs = log_p.exp()
        if self.score_kind == "entropy":
            score = -(probs * log_p).sum(dim=-1)
        elif self.score_kind == "max_softmax":
            score = 1.0 - probs.max(dim=-1).values
        else:  # energy
            score = -self.temperature * torch.logsumexp(z, dim=-1)
        return probs, score, score > self.threshold


@contextlib.contextmanager
def _pure_torch_kernels() -> Iterator[None]:
    """Trace with the PyTorch scan and convolution (tracers cannot see ctypes calls)."""
    saved = {k: os.environ.get(k) for k in ("NETMAMBA_SCAN", "NETMAMBA_CONV")}
    os.environ["NETMAMBA_SCAN"] = "torch"
    os.environ["NETMAMBA_CONV"] = "reference"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def example_inputs(predictor: Predictor, n: int = 4) -> dict[str, np.ndarray]:
    """Arrays of the model's geometry with the exported input types (for tracing and checks)."""
    from netmamba.models.inputs import random_batch

    generator = torch.Generator().manual_seed(0)
    batch = random_batch(predictor.config, n, generator)
    return {k: batch[k].numpy().astype(INPUT_DTYPES[k]) for k in ARRAY_NAMES}


def as_export_inputs(predictor: Predictor, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`arrays` cropped to the model's geometry and cast to the exported input types."""
    fitted = predictor.fit(arrays)
    return {k: np.ascontiguousarray(np.asarray(fitted[k]), INPUT_DTYPES[k]) for k in ARRAY_NAMES}


def export_model(
    model: str | Path | Predictor,
    output: str | Path,
    fmt: str | None = None,
) -> Path:
    """Write the exported model to `output` (+ `<output stem>.json`); returns its path.

    `fmt` is "onnx" or "pt2" (torch.export); by default it follows the extension (.onnx, else
    pt2)."""
    from netmamba.classify import load_predictor

    output = Path(output)
    fmt = fmt or ("onnx" if output.suffix.lower() == ".onnx" else "pt2")
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    predictor = load_predictor(model, device="cpu")
    wrapper = CalibratedClassifier(predictor).eval()
    example = example_inputs(predictor)
    args = tuple(torch.from_numpy(example[k]) for k in ARRAY_NAMES)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    flows = torch.export.Dim("flows", min=1, max=1 << 20)
    dynamic = {name: {0: flows} for name in ARRAY_NAMES}
    with _pure_torch_kernels(), torch.no_grad():
        if fmt == "onnx":
            _export_onnx(wrapper, args, dynamic, tmp)
        else:
            program = torch.export.export(wrapper, args, dynamic_shapes=dynamic)
            torch.export.save(program, str(tmp))
    tmp.replace(output)
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(describe(predictor, fmt), indent=2) + "\n")
    return output


def _export_onnx(
    wrapper: nn.Module, args: tuple[torch.Tensor, ...], dynamic: dict, path: Path
) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'netmamba[onnx]' "
            "(or export a torch.export program: --format pt2)"
        ) from None
    program = torch.onnx.export(
        wrapper,
        args,
        input_names=list(ARRAY_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=dynamic,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))


def describe(predictor: Predictor, fmt: str) -> dict[str, Any]:
    """What a deployment needs beside the graph: labels, inputs, settings of the arrays."""
    meta = predictor.metadata
    return {
        "format": fmt,
        "label_names": predictor.label_names,
        "inputs": {
            name: {"dtype": np.dtype(INPUT_DTYPES[name]).name, "width": width}
            for name, width in zip(
                ARRAY_NAMES,
                (
                    predictor.features.total_bytes,
                    predictor.features.n_packets,
                    predictor.features.n_packets,
                    predictor.features.seq_len,
                    predictor.features.seq_len,
                    predictor.features.seq_len,
                ),
                strict=True,
            )
        },
        "outputs": {
            "probs": "calibrated class probabilities (flows, classes), in label_names order",
            "unknown_score": f"{predictor.detector.score} score, higher = less like known classes",
            "unknown": f"unknown_score > {predictor.detector.threshold:.6g}",
        },
        "features": predictor.features.to_dict(),
        "flow": predictor.flow.to_dict() if predictor.flow else None,
        "debias": predictor.debias.to_dict() if predictor.debias else None,
        "detector": predictor.detector.to_dict(),
        "model": predictor.config.to_dict(),
        "source": {"name": meta.get("name"), "checkpoint": str(predictor.path)},
    }


class ExportedModel:
    """An exported model loaded for inference, with the same `run(arrays)` for both formats."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info = json.loads(self.path.with_suffix(".json").read_text())
        self.format = self.info["format"]
        if self.format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ExportError(
                    "running an ONNX model needs onnxruntime: pip install 'netmamba[onnx]'"
                ) from None
            self._session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        else:
            self._module = torch.export.load(str(self.path)).module()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs (`OUTPUT_NAMES`) for inputs of the exported types (`INPUT_DTYPES`)."""
        feeds = {k: np.ascontiguousarray(inputs[k], INPUT_DTYPES[k]) for k in ARRAY_NAMES}
        if self.format == "onnx":
            values = self._session.run(list(OUTPUT_NAMES), feeds)
        else:
            with torch.no_grad():
                outs = self._module(*(torch.from_numpy(feeds[k]) for k in ARRAY_NAMES))
            values = [o.numpy() for o in outs]
        return dict(zip(OUTPUT_NAMES, values, strict=True))


def verify_export(
    path: str | Path, predictor: Predictor, arrays: Mapping[str, Any], batch_size: int = 256
) -> dict[str, float]:
    """Compare an exported model with the Predictor on `arrays`: the largest probability
    difference, the share of flows whose predicted label differs, and of unknown flags."""
    exported = ExportedModel(path)
    inputs = as_export_inputs(predictor, arrays)
    n = len(inputs["bytes"])
    expected = predictor.predict(inputs, batch_size=batch_size)
    parts = [
        exported.run({k: v[i : i + batch_size] for k, v in inputs.items()})
        for i in range(0, n, batch_size)
    ]
    probs = np.concatenate([p["probs"] for p in parts]) if parts else np.zeros((0, 1))
    unknown = np.concatenate([p["unknown"] for p in parts]) if parts else np.zeros(0, bool)
    return {
        "flows": n,
        "max_prob_diff": float(np.abs(probs - expected["probs"]).max()) if n else 0.0,
        "label_mismatch": float(np.mean(probs.argmax(1) != expected["label"])) if n else 0.0,
        "unknown_mismatch": float(np.mean(unknown != expected["unknown"])) if n else 0.0,
    }
