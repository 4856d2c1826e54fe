"""The classical baseline: gradient-boosted trees on hand-made features of the same arrays.

The field's critics found that such baselines match or beat pre-trained models on leaky
benchmarks, so every result is reported beside one. It reads exactly what the model reads (the
sample arrays of `netmamba.features`, after the same de-biasing), on the same split:

    sequence   |size|, direction (+1 / -1) and inter-arrival time of each of the M_seq packets,
               NaN where padded; counts, sums, means, spreads of sizes and gaps per direction
    headers    per byte-modality packet, fields read from the byte array at the offsets its own
               headers give (IPv4 IHL, IPv6 extension headers, TCP data offset): IP version,
               header length, protocol, total length, TTL / hop limit, TOS / traffic class,
               DF, IPv4 ID, ports, TCP header length, flags, window, UDP length, copied lengths

Fields that a de-biasing switch zeroed read as zero, as they do for the model. Unavailable
fields (no such packet, not TCP, header cropped) are NaN, which the trees treat as missing.
Extraction is vectorised over flows (one NumPy pass per packet slot, no per-flow loop).
Model: scikit-learn's HistGradientBoostingClassifier, fitted on train and early-stopped on the
validation split (the NLL on valid, `n_iter_no_change` rounds).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netmamba.config import Config, ConfigError
from netmamba.evaluate.metrics import classification_metrics
from netmamba.features import FeatureConfig

# IPv6 extension headers walked to find the transport header (hop-by-hop, routing, fragment,
# AH, destination options, mobility, HIP, shim6)
_IPV6_EXTENSIONS = np.array([0, 43, 44, 51, 60, 135, 139, 140])
_MAX_EXTENSIONS = 8

PACKET_FIELDS = (
    "header_len",
    "payload_len",
    "ip_version",
    "ip_header_len",
    "protocol",
    "ip_total_len",
    "ttl",
    "tos",
    "dont_fragment",
    "ip_id",
    "src_port",
    "dst_port",
    "tcp_header_len",
    "tcp_flags",
    "tcp_window",
    "udp_length",
)


@dataclass
class BaselineConfig(Config):
    """Gradient-boosted trees settings (scikit-learn HistGradientBoostingClassifier)."""

    max_iter: int = 300  # boosting rounds at most
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    n_iter_no_change: int = 20  # early stopping patience on the validation NLL
    class_weight: str | None = "balanced"  # like the LDA loss, balance a long tail; None = off
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.n_iter_no_change < 1:
            raise ConfigError("BaselineConfig: max_iter and n_iter_no_change must be >= 1")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError("BaselineConfig.class_weight must be 'balanced' or null")


def _array(arrays: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in arrays:
        raise KeyError(f"the batch has no {name!r} array (got {', '.join(sorted(arrays))})")
    value = arrays[name]
    return np.asarray(value.cpu() if hasattr(value, "cpu") else value)


def _u16(hdr: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit value at per-row offsets `at` of hdr (n, N_h)."""
    return _u8(hdr, at) * 256 + _u8(hdr, at + 1)


def _u8(hdr: np.ndarray, at: np.ndarray) -> np.ndarray:
    index = np.clip(at, 0, hdr.shape[1] - 1)[:, None]
    return np.take_along_axis(hdr, index, axis=1)[:, 0].astype(np.float64)


def _header_fields(hdr: np.ndarray, header_len: np.ndarray) -> dict[str, np.ndarray]:
    """The PACKET_FIELDS (except the copied lengths) of one packet slot; hdr (n, N_h) uint8."""
    n, width = hdr.shape
    rows = np.arange(n)
    copied = np.minimum(header_len.astype(np.int64), width)  # real header bytes in hdr
    present = copied > 0
    version = (hdr[:, 0] >> 4).astype(np.int64)
    v4 = present & (version == 4) & (copied >= 20)
    v6 = present & (version == 6) & (copied >= 40)

    def where(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.where(mask, values, np.nan)

    # network layer
    ihl = (hdr[:, 0] & 0x0F).astype(np.int64) * 4
    l4 = np.where(v4, ihl, 40)  # transport offset; IPv6 extension headers walked below
    proto = np.where(v4, hdr[:, 9], hdr[:, 6]).astype(np.int64)
    for _ in range(_MAX_EXTENSIONS):
        walk = v6 & np.isin(proto, _IPV6_EXTENSIONS) & (l4 + 2 <= copied)
        if not walk.any():
            break
        at = np.clip(l4, 0, width - 2)
        ext_len = hdr[rows, at + 1].astype(np.int64)
        size = np.where(proto == 44, 8, np.where(proto == 51, (ext_len + 2) * 4, (ext_len + 1) * 8))
        proto = np.where(walk, hdr[rows, at], proto)
        l4 = np.where(walk, l4 + size, l4)
    ip = v4 | v6
    fields = {
        "ip_version": where(present, version),
        "ip_header_len": where(ip, l4),
        "protocol": where(ip, proto),
        "ip_total_len": np.where(
            v4, _u16(hdr, np.full(n, 2)), where(v6, _u16(hdr, np.full(n, 4)) + 40)
        ),
        "ttl": np.where(v4, hdr[:, 8], where(v6, hdr[:, 7])),
        "tos": np.where(v4, hdr[:, 1], where(v6, ((hdr[:, 0] & 0x0F) << 4) | (hdr[:, 1] >> 4))),
        "dont_fragment": where(v4, (hdr[:, 6] & 0x40) > 0),
        "ip_id": where(v4, _u16(hdr, np.full(n, 4))),
    }
    # transport layer: a field counts only when its bytes were really copied, and only in the
    # first fragment of a fragmented IPv4 packet (later fragments carry no transport header)
    fragment_offset = (hdr[:, 6].astype(np.int64) & 0x1F) * 256 + hdr[:, 7]
    has_transport = ip & ~(v4 & (fragment_offset > 0))
    tcp = has_transport & (proto == 6)
    udp = has_transport & (proto == 17)
    ports = (tcp | udp) & (l4 + 4 <= copied)
    fields["src_port"] = where(ports, _u16(hdr, l4))
    fields["dst_port"] = where(ports, _u16(hdr, l4 + 2))
    tcp_fixed = tcp & (l4 + 20 <= copied)
    flags = _u8(hdr, l4 + 13) + (_u8(hdr, l4 + 12).astype(np.int64) & 1) * 256  # + NS bit
    fields["tcp_header_len"] = where(tcp & (l4 + 13 <= copied), (_u8(hdr, l4 + 12) // 16) * 4)
    fields["tcp_flags"] = where(tcp_fixed, flags)
    fields["tcp_window"] = where(tcp_fixed, _u16(hdr, l4 + 14))
    fields["udp_length"] = where(udp & (l4 + 8 <= copied), _u16(hdr, l4 + 4))
    return fields


def _sequence_features(
    sizes: np.ndarray, iats: np.ndarray, mask: np.ndarray
) -> tuple[list[np.ndarray], list[str]]:
    size = np.abs(sizes.astype(np.float64))  # (n, M_seq)
    sign = np.sign(sizes.astype(np.float64))
    gap = iats.astype(np.float64)
    columns: list[np.ndarray] = []
    names: list[str] = []
    for name, values in (("size", size), ("direction", sign), ("iat", gap)):
        padded = np.where(mask, values, np.nan)
        columns.extend(padded.T)
        names.extend(f"{name}_{i}" for i in range(values.shape[1]))
    count = mask.sum(axis=1).astype(np.float64)
    forward = mask & (sign >= 0)
    backward = mask & (sign < 0)

    def masked_stats(values: np.ndarray, where: np.ndarray, label: str) -> None:
        k = where.sum(axis=1)
        total = np.where(where, values, 0.0).sum(axis=1)
        mean = np.divide(total, k, out=np.full(k.shape, np.nan), where=k > 0)
        sq = np.where(where, (values - np.nan_to_num(mean)[:, None]) ** 2, 0.0).sum(axis=1)
        std = np.sqrt(np.divide(sq, k, out=np.full(k.shape, np.nan), where=k > 0))
        low = np.where(k > 0, np.where(where, values, np.inf).min(axis=1), np.nan)
        high = np.where(k > 0, np.where(where, values, -np.inf).max(axis=1), np.nan)
        columns.extend([k.astype(np.float64), total, mean, std, low, high])
        names.extend(f"{label}_{s}" for s in ("count", "sum", "mean", "std", "min", "max"))

    masked_stats(size, mask, "size")
    masked_stats(size, forward, "size_fwd")
    masked_stats(size, backward, "size_bwd")
    later = mask.copy()
    later[:, 0] = False  # the first gap is 0 by definition
    masked_stats(gap, later, "iat")
    columns.append(np.divide(forward.sum(axis=1), count, out=np.full(count.shape, np.nan),
                             where=count > 0))  # fmt: skip
    names.append("forward_share")
    return columns, names


def baseline_features(
    arrays: Mapping[str, Any], feature_config: FeatureConfig | None = None
) -> tuple[np.ndarray, list[str]]:
    """Feature matrix X (n, F) float32 and the F feature names, from a batch of sample arrays."""
    geometry = feature_config or FeatureConfig()
    data = _array(arrays, "bytes")
    header_lens = _array(arrays, "header_lens")
    payload_lens = _array(arrays, "payload_lens")
    sizes, iats = _array(arrays, "sizes"), _array(arrays, "iats")
    mask = _array(arrays, "seq_mask").astype(bool)
    n = data.shape[0]
    width = geometry.total_bytes
    if data.ndim != 2 or data.shape[1] != width:
        raise ValueError(
            f"bytes must be (flows, {width}) for {geometry.n_packets} packets x "
            f"({geometry.header_bytes} + {geometry.payload_bytes}) bytes, got {data.shape}; "
            "pass the FeatureConfig the dataset was prepared with"
        )
    if header_lens.shape != (n, geometry.n_packets) or payload_lens.shape != header_lens.shape:
        raise ValueError(f"header_lens and payload_lens must be ({n}, {geometry.n_packets})")
    if sizes.shape != (n, geometry.seq_len) or not iats.shape == mask.shape == sizes.shape:
        raise ValueError(f"sizes, iats and seq_mask must be ({n}, {geometry.seq_len})")
    columns, names = _sequence_features(sizes, iats, mask)
    packets = data.reshape(n, geometry.n_packets, geometry.packet_bytes)
    for k in range(geometry.n_packets):
        present = header_lens[:, k] > 0
        fields = _header_fields(packets[:, k, : geometry.header_bytes], header_lens[:, k])
        fields["header_len"] = np.where(present, header_lens[:, k], np.nan)
        fields["payload_len"] = np.where(present, payload_lens[:, k], np.nan)
        for field in PACKET_FIELDS:
            columns.append(fields[field].astype(np.float64))
            names.append(f"p{k}_{field}")
    return np.stack(columns, axis=1).astype(np.float32), names


class ClassicalBaseline:
    """Gradient-boosted trees on `baseline_features`; labels are class indices (-1 ignored)."""

    def __init__(
        self, config: BaselineConfig | None = None, feature_config: FeatureConfig | None = None
    ) -> None:
        self.config = config or BaselineConfig()
        self.feature_config = feature_config or FeatureConfig()
        self.model: Any = None
        self.kept: np.ndarray | None = None  # feature columns with some value in training
        self.num_classes = 0
        self.fit_seconds = 0.0

    def _features(self, arrays: Mapping[str, Any]) -> np.ndarray:
        x, _ = baseline_features(arrays, self.feature_config)
        if self.kept is None:
            # columns that are NaN for every training flow (a packet slot no flow reaches, UDP
            # fields in TCP-only data) carry nothing, and scikit-learn's binning rejects them
            self.kept = ~np.isnan(x).all(axis=0)
        return x[:, self.kept]

    def _labelled(self, arrays: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x = self._features(arrays)
        y = _array(arrays, "labels").astype(np.int64)
        keep = y >= 0
        return x[keep], y[keep]

    def fit(
        self,
        train: Mapping[str, Any],
        valid: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
    ) -> ClassicalBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        start = time.perf_counter()
        self.kept = None
        x, y = self._labelled(train)
        if np.unique(y).size < 2:
            raise ValueError("the baseline needs labelled training flows of at least 2 classes")
        self.num_classes = int(num_classes if num_classes is not None else y.max() + 1)
        c = self.config
        model = HistGradientBoostingClassifier(
            learning_rate=c.learning_rate,
            max_iter=c.max_iter,
            max_leaf_nodes=c.max_leaf_nodes,
            min_samples_leaf=c.min_samples_leaf,
            l2_regularization=c.l2_regularization,
            early_stopping=False,
            n_iter_no_change=c.n_iter_no_change,
            class_weight=c.class_weight,
            random_state=c.seed,
        )
        x_val = y_val = None
        if valid is not None:
            x_val, y_val = self._labelled(valid)
            seen = np.isin(y_val, np.unique(y))  # valid flows of classes train never saw
            x_val, y_val = x_val[seen], y_val[seen]
            if y_val.size:
                model.set_params(early_stopping=True)
            else:
                x_val = y_val = None
        model.fit(x, y, X_val=x_val, y_val=y_val)
        self.model = model
        self.fit_seconds = time.perf_counter() - start
        return self

    def predict_proba(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """(n, C) class probabilities; classes absent from training get 0."""
        if self.model is None:
            raise RuntimeError("fit the baseline before predicting")
        x = self._features(arrays)
        proba = np.zeros((x.shape[0], self.num_classes))
        proba[:, self.model.classes_] = self.model.predict_proba(x)
        return proba

    def predict(self, arrays: Mapping[str, Any]) -> np.ndarray:
        return self.predict_proba(arrays).argmax(axis=1)

    def describe(self) -> dict[str, Any]:
        return {
            "model": "HistGradientBoostingClassifier",
            "config": self.config.to_dict(),
            "n_iter": int(self.model.n_iter_) if self.model is not None else 0,
            "n_features": int(self.model.n_features_in_) if self.model is not None else 0,
            "fit_seconds": round(self.fit_seconds, 3),
        }


def run_baseline(
    train: Mapping[str, Any],
    valid: Mapping[str, Any] | None,
    test: Mapping[str, Any],
    class_names: Sequence[str],
    feature_config: FeatureConfig | None = None,
    config: BaselineConfig | None = None,
) -> dict[str, Any]:
    """Fit on train, early-stop on valid, score test: `classification_metrics` of the test
    split plus a `baseline` entry (iterations, features, fit time, settings)."""
    baseline = ClassicalBaseline(config, feature_config).fit(train, valid, len(class_names))
    metrics = classification_metrics(
        _array(test, "labels"), baseline.predict(test), class_names=class_names
    )
    metrics["baseline"] = baseline.describe()
    return metrics
