"""The one inference path: a fine-tuned checkpoint + sample arrays -> predictions.

    predictor = Predictor.load("runs/iot")            # a run folder or a checkpoint folder
    out = predictor.predict(arrays)                   # arrays of netmamba.features, any batch
    out["label"], out["confidence"], out["top_ids"], out["top_probs"], out["unknown"]
    predictor.label_names[out["label"]]

Used by `netmamba evaluate`, `audit`, `classify` and the service, so all of them compute the
same thing:

    z       = s x model(arrays)        s = the logit scale of the training loss (30 for LDA,
                                       whose softmax reads s z; 1 for cross-entropy)
    p       = softmax(z / T)           T fitted on the validation split after fine-tuning
    unknown = score(z, T) > threshold  the UnknownDetector stored with the checkpoint

Inputs of a larger geometry (more packets, bytes, a longer sequence) than the model reads are
cropped to it; a smaller one is an error that says how to fix it. Inference runs in float32
unless a lower precision is asked for (`dtype="bfloat16"` runs under autocast).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netmamba.config import ConfigError
from netmamba.debias import DebiasConfig
from netmamba.evaluate.calibration import softmax
from netmamba.evaluate.ood import UnknownDetector
from netmamba.features import ARRAY_NAMES, FeatureConfig, crop_arrays
from netmamba.flows import FlowConfig
from netmamba.models import Classifier, GeometryError, ModelConfig
from netmamba.models.weights import load_checkpoint, read_metadata
from netmamba.registry import CheckpointError, resolve_checkpoint

TOP_K = 3


def geometry_of(arrays: Mapping[str, Any]) -> tuple[int, int, int]:
    """(M_b, bytes per packet, M_seq) read from the array widths."""
    m_b = int(np.shape(arrays["header_lens"])[1])
    width = int(np.shape(arrays["bytes"])[1])
    m_seq = int(np.shape(arrays["sizes"])[1])
    return m_b, width // max(m_b, 1), m_seq


def fit_arrays(
    arrays: Mapping[str, Any],
    model: ModelConfig,
    source: FeatureConfig | None = None,
) -> dict[str, Any]:
    """`arrays` with the model's geometry: unchanged when they have it, else cropped from the
    geometry `source` they were made with. Raises GeometryError saying what to do."""
    missing = [k for k in ARRAY_NAMES if k not in arrays]
    if missing:
        raise GeometryError(
            f"the arrays lack {', '.join(missing)}; expected {', '.join(ARRAY_NAMES)}"
        )
    target = model.feature_config()
    m_b, per_packet, m_seq = geometry_of(arrays)
    wanted = (target.n_packets, target.packet_bytes, target.seq_len)
    if source is None:
        if (m_b, per_packet, m_seq) == wanted:
            return {k: arrays[k] for k in ARRAY_NAMES}
        raise GeometryError(
            f"the arrays have M_b={m_b} packets of {per_packet} bytes and M_seq={m_seq}, but the "
            f"model reads M_b={target.n_packets}, N_h={target.header_bytes}, "
            f"N_p={target.payload_bytes}, M_seq={target.seq_len}; give the geometry the arrays "
            "were made with (their dataset's FeatureConfig) so they can be cropped"
        )
    if (source.n_packets, source.packet_bytes, source.seq_len) != (m_b, per_packet, m_seq):
        raise GeometryError(
            f"the arrays (M_b={m_b}, {per_packet} bytes per packet, M_seq={m_seq}) do not have "
            f"the geometry said to be theirs (M_b={source.n_packets}, N_h={source.header_bytes}, "
            f"N_p={source.payload_bytes}, M_seq={source.seq_len})"
        )
    same = all(
        getattr(source, k) == getattr(target, k)
        for k in ("n_packets", "header_bytes", "payload_bytes", "seq_len")
    )
    if same and source.mtu <= target.mtu:
        return {k: arrays[k] for k in ARRAY_NAMES}
    try:
        cropped = crop_arrays({k: np.asarray(arrays[k]) for k in ARRAY_NAMES}, source, target)
    except ConfigError as exc:
        raise GeometryError(
            f"the data is smaller than the model's input: {exc}; the model reads "
            f"M_b={target.n_packets}, N_h={target.header_bytes}, N_p={target.payload_bytes}, "
            f"M_seq={target.seq_len}"
        ) from None
    return cropped


class Predictor:
    """A fine-tuned classifier with its labels, calibration and unknown-class detector."""

    def __init__(
        self,
        model: Classifier,
        label_names: list[str],
        *,
        logit_scale: float = 1.0,
        detector: UnknownDetector | None = None,
        data_features: FeatureConfig | None = None,
        flow: FlowConfig | None = None,
        debias: DebiasConfig | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: str | None = None,
        path: Path | None = None,
    ) -> None:
        if len(label_names) != model.num_classes:
            raise CheckpointError(
                f"{len(label_names)} label names for a model of {model.num_classes} classes"
            )
        self.model = model.eval()
        self.label_names = list(label_names)
        self.logit_scale = float(logit_scale)
        self.detector = detector or UnknownDetector()
        self.data_features = data_features
        self.flow = flow
        self.debias = debias
        self.metadata = metadata or {}
        self.dtype = dtype
        self.path = path

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        threads: int | None = None,
        dtype: str | None = None,
    ) -> Predictor:
        """The predictor of a checkpoint folder or a fine-tuning run folder (its best model).

        `device` defaults to a GPU when there is one; `threads` sets torch's CPU threads;
        `dtype` ("bfloat16", "float16") runs inference under autocast (default float32)."""
        folder = resolve_checkpoint(path)
        meta = read_metadata(folder)
        if meta.get("kind") != "classifier":
            raise CheckpointError(
                f"{folder}: a pre-training checkpoint has no classification head; fine-tune it "
                "first (netmamba finetune DATASET --from " + str(path) + ")"
            )
        if threads:
            torch.set_num_threads(int(threads))
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        checkpoint = load_checkpoint(folder, device)
        extra = checkpoint.extra
        num_classes = checkpoint.model.num_classes  # type: ignore[union-attr]
        names = extra.get("label_names") or [str(i) for i in range(num_classes)]
        detector = (
            UnknownDetector.from_dict(extra["unknown_detector"])
            if extra.get("unknown_detector")
            else None
        )

        def section(name: str, kind: type) -> Any:
            return kind.from_dict(extra[name]) if extra.get(name) else None

        return cls(
            checkpoint.model,  # type: ignore[arg-type]
            names,
            logit_scale=float(extra.get("logit_scale", 1.0)),
            detector=detector,
            data_features=section("data_features", FeatureConfig),
            flow=section("flow", FlowConfig),
            debias=section("debias", DebiasConfig),
            metadata=extra,
            dtype=dtype,
            path=folder,
        )

    # ---- properties ------------------------------------------------------------------------

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def features(self) -> FeatureConfig:
        """The geometry the model reads."""
        return self.model.config.feature_config()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def temperature(self) -> float:
        return self.detector.temperature

    # ---- inference -------------------------------------------------------------------------

    def fit(self, arrays: Mapping[str, Any], geometry: FeatureConfig | None = None) -> dict:
        """The arrays cropped to the model's geometry (`geometry`: the arrays' own; default the
        geometry of the data the model was trained on, when the widths say it is that)."""
        if geometry is None and self.data_features is not None:
            target = self.features
            shape = geometry_of(arrays)
            own = (target.n_packets, target.packet_bytes, target.seq_len)
            data = self.data_features
            if shape != own and shape == (data.n_packets, data.packet_bytes, data.seq_len):
                geometry = data
        return fit_arrays(arrays, self.config, geometry)

    @torch.inference_mode()
    def logits(
        self,
        arrays: Mapping[str, Any],
        batch_size: int = 256,
        geometry: FeatureConfig | None = None,
    ) -> np.ndarray:
        """(n, C) float32 logits z = s x model(arrays), before the temperature."""
        data = self.fit(arrays, geometry)
        n = int(np.shape(data["bytes"])[0])
        out = np.zeros((n, self.model.num_classes), np.float32)
        autocast = (
            torch.autocast(self.device.type, dtype=getattr(torch, self.dtype))
            if self.dtype
            else torch.autocast(self.device.type, enabled=False)
        )
        self.model.eval()
        with autocast:
            for start in range(0, n, batch_size):
                part = {k: v[start : start + batch_size] for k, v in data.items()}
                z = self.model(part).float() * self.logit_scale  # (b, C)
                out[start : start + len(z)] = z.cpu().numpy()
        return out

    def predict(
        self,
        arrays: Mapping[str, Any],
        batch_size: int = 256,
        geometry: FeatureConfig | None = None,
    ) -> dict[str, np.ndarray]:
        """Per flow: `label` (class id), `confidence` (its calibrated probability),
        `top_ids` / `top_probs` (the 3 most likely classes), `unknown` (flagged as a class not
        seen in training) and `unknown_score`, `probs` (n, C)."""
        return self.predict_logits(self.logits(arrays, batch_size, geometry))

    def predict_logits(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """`predict` from logits already computed by `logits`."""
        n, c = logits.shape
        if n == 0:
            k = min(TOP_K, c)
            return {
                "label": np.zeros(0, np.int64),
                "confidence": np.zeros(0, np.float32),
                "top_ids": np.zeros((0, k), np.int64),
                "top_probs": np.zeros((0, k), np.float32),
                "unknown": np.zeros(0, bool),
                "unknown_score": np.zeros(0, np.float32),
                "probs": np.zeros((0, c), np.float32),
            }
        probs = softmax(logits, self.temperature)  # (n, C) float64
        k = min(TOP_K, c)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top_probs = np.take_along_axis(probs, top, axis=1)
        return {
            "label": top[:, 0].astype(np.int64),
            "confidence": top_probs[:, 0].astype(np.float32),
            "top_ids": top.astype(np.int64),
            "top_probs": top_probs.astype(np.float32),
            "unknown": self.detector.is_unknown(logits),
            "unknown_score": self.detector.scores(logits).astype(np.float32),
            "probs": probs.astype(np.float32),
        }
