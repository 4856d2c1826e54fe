"""Property tests: random and mutated captures never make the reader (or the meter and
feature extraction after it) raise, and the native kernels agree with the Python reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcapgen as pg
from netmamba.capture import CaptureError, PacketBatch, open_capture
from netmamba.capture.batch import PACKET_DTYPE, native, parse_records_python
from netmamba.capture.reader import _walk_pcap_native, walk_pcap_python
from netmamba.debias import DebiasConfig
from netmamba.features import FeatureConfig, flow_arrays
from netmamba.flows import FlowConfig, FlowMeter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINKTYPES = [0, 1, 9, 12, 101, 104, 108, 113, 228, 229, 276, 127]


def _seed_captures() -> list[bytes]:
    sess = pg.tcp_session(
        ("10.1.1.1", 5555),
        ("10.2.2.2", 443),
        [("client", pg.tls_client_hello("example.org")), ("server", b"s" * 50)],
        options=pg.tcp_timestamp_option(1, 0),
    )
    udp6 = pg.udp_flow(("2001:db8::1", 1), ("2001:db8::2", 2), [("client", b"x" * 20)] * 3)
    frames = pg.frames(sess, pg.LINKTYPE_ETHERNET, vlans=(5,))
    return [
        pg.pcap_bytes(frames),
        pg.pcap_bytes(
            pg.frames(udp6, pg.LINKTYPE_LINUX_SLL), pg.LINKTYPE_LINUX_SLL, nanosecond=True
        ),
        pg.pcapng_bytes(
            [(i % 2, t, f) for i, (t, f) in enumerate(frames)],
            [pg.Interface(1), pg.Interface(1, tsresol=9)],
            simple=[1],
        ),
    ]


SEEDS = _seed_captures()


def _consume(data: bytes) -> None:
    """Read a capture from bytes through the whole extraction; only CaptureError may escape
    (a file that is not a capture at all)."""
    try:
        reader = open_capture(io.BytesIO(data), name="fuzz")
    except CaptureError:
        return
    features = FeatureConfig(n_packets=3, header_bytes=40, payload_bytes=30, seq_len=6)
    meter = FlowMeter(FlowConfig(mode="bidirectional", max_flows=4), features)
    with reader:
        flows = list(meter.run(reader.batches(max_packets=5)))
    stats = reader.stats
    status_skips = sum(
        v
        for k, v in stats.skipped.items()
        if k not in ("truncated_record", "bad_block", "unknown_interface")
    )
    assert stats.packets == stats.used + status_skips
    assert sum(f.packets for f in flows) == stats.used
    arrays = flow_arrays(flows, features, DebiasConfig(), keep_raw=True)
    assert arrays["bytes"].shape == (len(flows), features.total_bytes)


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from([b"", *[s[:4] for s in SEEDS], b"\x1f\x8b"]))
def test_random_bytes_never_raise(data, magic):
    _consume(magic + data)


@SETTINGS
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.integers(0, 10_000),
)
def test_mutated_captures_never_raise(which, flips, cut):
    data = bytearray(SEEDS[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _consume(bytes(data[: max(cut, 4)]) if cut < len(data) else bytes(data))


@SETTINGS
@given(st.sampled_from(LINKTYPES), st.binary(max_size=120), st.sampled_from([b"", b"E", b"`"]))
def test_native_parser_matches_python_on_random_frames(linktype, body, lead):
    if native() is None:
        pytest.skip("native packet kernel not built")
    # a plausible start (an IPv4 or IPv6 first byte) reaches the deeper parsing code more often
    frames = [(0, lead + body, linktype), (0, body, linktype)]
    batch = PacketBatch.from_frames(frames)
    py = batch.packets.copy()
    parse_records_python(batch.buf, py)
    for name in PACKET_DTYPE.names:
        assert np.array_equal(py[name], batch.packets[name]), name


@SETTINGS
@given(st.binary(max_size=400), st.booleans(), st.booleans(), st.integers(0, 300))
def test_native_pcap_walker_matches_python(data, big_endian, nanosecond, limit):
    if native() is None:
        pytest.skip("native packet kernel not built")
    data = (SEEDS[0][24:] if limit % 2 else b"") + data
    a = np.zeros(50, PACKET_DTYPE)
    b = np.zeros(50, PACKET_DTYPE)
    ra = _walk_pcap_native(data, 0, big_endian, nanosecond, 1, limit * 8, a)
    rb = walk_pcap_python(data, 0, big_endian, nanosecond, 1, limit * 8, b)
    assert ra == rb
    n = ra[0]
    for name in ("ts_ns", "off", "caplen", "wirelen", "linktype"):
        assert np.array_equal(a[name][:n], b[name][:n]), name
