"""The classical baseline reads header fields at their parsed offsets and learns a toy task."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from netmamba.evaluate.baseline import (
    PACKET_FIELDS,
    BaselineConfig,
    ClassicalBaseline,
    baseline_features,
    run_baseline,
)
from netmamba.evaluate.metrics import SUMMARY_KEYS
from netmamba.features import FeatureConfig

GEOMETRY = FeatureConfig(n_packets=2, header_bytes=64, payload_bytes=16, seq_len=4)


def ipv4_tcp(sport, dport, flags, window, ttl=64, ip_id=0x1234, payload=0, options=4):
    tcp_len = 20 + options
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0x28,
        20 + tcp_len + payload,
        ip_id,
        0x4000,
        ttl,
        6,
        0,
        bytes([10, 0, 0, 1]),
        bytes([10, 0, 0, 2]),
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, (tcp_len // 4) << 4, flags, window, 0, 0)
    return ip + tcp + b"\x01" * options


def ipv6_hop_by_hop_udp(sport, dport, payload, hop_limit=55, traffic_class=0xB8):
    first = (6 << 28) | (traffic_class << 20)
    ip = struct.pack(
        "!IHBB16s16s", first, 8 + 8 + payload, 0, hop_limit, b"\x00" * 16, b"\x11" * 16
    )
    hop_by_hop = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # next header UDP, 8 bytes long
    udp = struct.pack("!HHHH", sport, dport, 8 + payload, 0)
    return ip + hop_by_hop + udp


def flows(packet_headers, payload_lens, sizes, iats, labels=None):
    """Sample arrays for flows given per-flow lists of (header bytes) for each packet slot."""
    n = len(packet_headers)
    g = GEOMETRY
    data = np.zeros((n, g.total_bytes), np.uint8)
    header_lens = np.zeros((n, g.n_packets), np.uint16)
    for i, packets in enumerate(packet_headers):
        for k, header in enumerate(packets):
            copied = header[: g.header_bytes]
            start = k * g.packet_bytes
            data[i, start : start + len(copied)] = np.frombuffer(copied, np.uint8)
            header_lens[i, k] = len(copied)
    sizes = np.asarray(sizes, np.int16)
    return {
        "bytes": data,
        "header_lens": header_lens,
        "payload_lens": np.asarray(payload_lens, np.uint16),
        "sizes": sizes,
        "iats": np.asarray(iats, np.float32),
        "seq_mask": sizes != 0,
        "labels": np.asarray(labels if labels is not None else [0] * n, np.int64),
    }


def test_header_fields_are_read_at_their_parsed_offsets():
    arrays = flows(
        [
            [ipv4_tcp(51000, 443, 0x12, 64240, payload=10), ipv4_tcp(51000, 443, 0x18, 501)],
            [ipv6_hop_by_hop_udp(5353, 53, payload=30)],
        ],
        payload_lens=[[10, 0], [16, 0]],
        sizes=[[74, -1500, 52, 0], [78, 0, 0, 0]],
        iats=[[0.0, 0.01, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]],
    )
    x, names = baseline_features(arrays, GEOMETRY)
    row = [dict(zip(names, r, strict=True)) for r in x.tolist()]
    tcp, udp = row[0], row[1]
    assert (tcp["p0_ip_version"], tcp["p0_ip_header_len"], tcp["p0_protocol"]) == (4, 20, 6)
    assert tcp["p0_ip_total_len"] == 20 + 24 + 10 and tcp["p0_ttl"] == 64
    assert (tcp["p0_tos"], tcp["p0_dont_fragment"], tcp["p0_ip_id"]) == (0x28, 1, 0x1234)
    assert (tcp["p0_src_port"], tcp["p0_dst_port"], tcp["p0_tcp_header_len"]) == (51000, 443, 24)
    assert (tcp["p0_tcp_flags"], tcp["p0_tcp_window"]) == (0x12, 64240)
    assert (tcp["p1_tcp_flags"], tcp["p1_tcp_window"]) == (0x18, 501)
    assert (tcp["p0_header_len"], tcp["p0_payload_len"]) == (44, 10)
    assert math.isnan(tcp["p0_udp_length"])
    # IPv6: the hop-by-hop header is walked to reach UDP at offset 48
    assert (udp["p0_ip_version"], udp["p0_ip_header_len"], udp["p0_protocol"]) == (6, 48, 17)
    assert (udp["p0_src_port"], udp["p0_dst_port"], udp["p0_udp_length"]) == (5353, 53, 38)
    assert (udp["p0_ttl"], udp["p0_tos"], udp["p0_ip_total_len"]) == (55, 0xB8, 40 + 16 + 30)
    assert math.isnan(udp["p0_tcp_window"]) and math.isnan(udp["p0_dont_fragment"])
    assert all(math.isnan(udp[f"p1_{f}"]) for f in PACKET_FIELDS)  # no second packet


def test_sequence_features_ignore_padding():
    arrays = flows(
        [[ipv4_tcp(1, 2, 2, 3)]],
        payload_lens=[[0, 0]],
        sizes=[[60, -1500, 52, 0]],
        iats=[[0.0, 0.01, 0.5, 0.0]],
    )
    x, names = baseline_features(arrays, GEOMETRY)
    f = dict(zip(names, x[0].tolist(), strict=True))
    assert (f["size_0"], f["size_1"], f["direction_1"], f["iat_2"]) == (60, 1500, -1, 0.5)
    assert math.isnan(f["size_3"]) and math.isnan(f["iat_3"]) and math.isnan(f["direction_3"])
    assert f["size_count"] == 3 and f["size_mean"] == pytest.approx(1612 / 3)
    assert (f["size_fwd_sum"], f["size_bwd_sum"], f["size_max"], f["size_min"]) == (
        112,
        1500,
        1500,
        52,
    )
    assert f["iat_mean"] == pytest.approx(0.255) and f["iat_count"] == 2
    assert f["forward_share"] == pytest.approx(2 / 3)


def test_cropped_headers_and_zeroed_fields():
    cropped = ipv4_tcp(8080, 80, 0x10, 1000, ttl=0)[:24]  # de-biased TTL; 4 TCP bytes kept
    arrays = flows([[cropped]], [[0, 0]], [[40, 0, 0, 0]], [[0.0, 0, 0, 0]])
    x, names = baseline_features(arrays, GEOMETRY)
    f = dict(zip(names, x[0].tolist(), strict=True))
    assert f["p0_ttl"] == 0  # a zeroed field reads as zero, as the model sees it
    assert (f["p0_src_port"], f["p0_dst_port"]) == (8080, 80)
    assert math.isnan(f["p0_tcp_flags"]) and math.isnan(f["p0_tcp_header_len"])


def test_a_later_ipv4_fragment_has_no_transport_fields():
    header = bytearray(ipv4_tcp(8080, 80, 0x10, 1000))
    header[6:8] = (0x2000 | 185).to_bytes(2, "big")  # more fragments, offset 185 x 8 bytes
    arrays = flows([[bytes(header)]], [[0, 0]], [[40, 0, 0, 0]], [[0.0, 0, 0, 0]])
    x, names = baseline_features(arrays, GEOMETRY)
    f = dict(zip(names, x[0].tolist(), strict=True))
    assert f["p0_protocol"] == 6 and f["p0_dont_fragment"] == 0
    assert math.isnan(f["p0_src_port"]) and math.isnan(f["p0_tcp_flags"])


def test_wrong_geometry_is_explained():
    arrays = flows([[ipv4_tcp(1, 2, 2, 3)]], [[0, 0]], [[40, 0, 0, 0]], [[0.0] * 4])
    with pytest.raises(ValueError, match="pass the FeatureConfig"):
        baseline_features(arrays, FeatureConfig())
    del arrays["iats"]
    with pytest.raises(KeyError, match="no 'iats' array"):
        baseline_features(arrays, GEOMETRY)


def synthetic_split(n_per_class, seed):
    """Three classes told apart by TCP window, server port and first-packet size (noisy)."""
    rng = np.random.default_rng(seed)
    headers, payloads, sizes, iats, labels = [], [], [], [], []
    for label, (window, port, size) in enumerate(
        [(64240, 443, 600), (29200, 443, 300), (65535, 8883, 300)]
    ):
        for _ in range(n_per_class):
            w = window if rng.random() > 0.05 else int(rng.integers(1000, 65535))
            headers.append([ipv4_tcp(int(rng.integers(1024, 65535)), port, 0x18, w)])
            s = int(size + rng.normal(0, 40))
            payloads.append([min(16, s), 0])
            sizes.append([s, -int(rng.integers(40, 1500)), 52, 0])
            iats.append([0.0, float(rng.exponential(0.05)), float(rng.exponential(0.5)), 0.0])
            labels.append(label)
    return flows(headers, payloads, sizes, iats, labels)


def test_baseline_learns_a_separable_toy_task_and_reports_the_model_metrics():
    train, valid, test = (synthetic_split(n, seed) for n, seed in ((120, 0), (30, 1), (40, 2)))
    metrics = run_baseline(
        train,
        valid,
        test,
        ["tls-a", "tls-b", "mqtt"],
        GEOMETRY,
        BaselineConfig(max_iter=200, learning_rate=0.3, n_iter_no_change=5),
    )
    assert set(SUMMARY_KEYS) <= set(metrics)
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9
    assert metrics["classes"] == ["tls-a", "tls-b", "mqtt"]
    info = metrics["baseline"]
    x, names = baseline_features(train, GEOMETRY)
    assert len(names) == x.shape[1] == 3 * 4 + 25 + 2 * len(PACKET_FIELDS)
    # columns empty in every training flow (the second packet slot, UDP fields) are dropped
    assert info["n_features"] == int((~np.isnan(x).all(axis=0)).sum()) < x.shape[1]
    assert 1 <= info["n_iter"] < 200  # early-stopped on the validation split


def test_classes_missing_from_training_get_zero_probability():
    train = synthetic_split(40, 0)
    keep = train["labels"] != 1
    train = {k: v[keep] for k, v in train.items()}
    baseline = ClassicalBaseline(BaselineConfig(max_iter=20), GEOMETRY).fit(train, None, 3)
    proba = baseline.predict_proba(synthetic_split(5, 1))
    assert proba.shape == (15, 3) and np.all(proba[:, 1] == 0)
    assert proba.sum(axis=1) == pytest.approx(np.ones(15))
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassicalBaseline(feature_config=GEOMETRY).fit({k: v[:40] for k, v in train.items()})
