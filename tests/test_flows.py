"""Flow meter: grouping by 5-tuple, sessions and their client, timeouts, eviction, readiness,
fragments, and what a flow keeps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pcapgen as pg
from netmamba.capture import PacketBatch
from netmamba.capture.batch import native
from netmamba.config import ConfigError
from netmamba.features import FeatureConfig
from netmamba.flows import FlowConfig, FlowMeter

S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 443)


def batch(sent, linktype=pg.LINKTYPE_ETHERNET):
    return PacketBatch.from_frames((t, f, linktype) for t, f in pg.frames(sent, linktype))


def run(sent, **cfg):
    features = cfg.pop("features", FeatureConfig())
    meter = FlowMeter(FlowConfig(**cfg), features, source="x.pcap")
    return list(meter.run([batch(sent)])), meter


def conversation(n_client=2, n_server=2, **kw):
    payloads = [("client", b"c" * 10)] * n_client + [("server", b"s" * 30)] * n_server
    return pg.tcp_session(CLIENT, SERVER, payloads, start_ns=T0, gap_ns=S // 10, **kw)


def test_unidirectional_flows_split_the_directions():
    flows, _ = run(conversation(), mode="unidirectional")
    assert len(flows) == 2
    by_src = {f.src: f for f in flows}
    up, down = by_src["10.0.0.1"], by_src["10.0.0.2"]
    assert (up.packets, down.packets) == (4, 3)  # SYN, ACK, 2 data / SYN-ACK, 2 data
    assert (up.sport, up.dport, down.sport, down.dport) == (40000, 443, 443, 40000)
    assert up.session == down.session == "6 10.0.0.1 40000 10.0.0.2 443"
    assert up.session_key == down.session_key
    assert all(s > 0 for s in up.sizes + down.sizes)


def test_bidirectional_session_client_is_the_first_sender_and_sizes_are_signed():
    sent = conversation()
    flows, _ = run(sent, mode="bidirectional")
    (flow,) = flows
    assert (flow.src, flow.sport, flow.dst, flow.dport) == ("10.0.0.1", 40000, "10.0.0.2", 443)
    lengths = [len(s.ip) for s in sent]
    signs = [1 if s.from_client else -1 for s in sent]
    assert flow.sizes == [n * d for n, d in zip(lengths, signs, strict=True)]
    assert flow.dirs == signs[:5]
    assert (flow.packets, flow.bytes) == (7, sum(lengths))
    assert (flow.first_ns, flow.last_ns) == (T0, T0 + 6 * S // 10)
    assert flow.ts == [T0 + i * S // 10 for i in range(7)]


def test_client_is_the_first_sender_even_when_it_has_the_larger_address():
    sent = pg.udp_flow(("10.0.0.9", 5000), ("10.0.0.1", 53), [("client", b"q"), ("server", b"r")])
    (flow,), _ = run(sent, mode="bidirectional")
    assert (flow.src, flow.sport) == ("10.0.0.9", 5000)
    assert [s > 0 for s in flow.sizes] == [True, False]


def test_mac_addresses_and_source_are_kept():
    (flow,), _ = run(conversation(), mode="bidirectional")
    assert (flow.src_mac, flow.dst_mac, flow.source) == (pg.CLIENT_MAC, pg.SERVER_MAC, "x.pcap")


def test_header_and_payload_bytes_are_cropped_while_metering():
    feats = FeatureConfig(n_packets=4, header_bytes=30, payload_bytes=8, seq_len=5)
    sent = conversation()
    (flow,), _ = run(sent, mode="bidirectional", features=feats)
    assert len(flow.headers) == 4 and len(flow.ts) == 5
    assert flow.headers[0] == sent[0].ip[:30]
    assert flow.payloads[3] == b"c" * 8
    assert flow.payloads[0] == b""  # the SYN carries no payload


def test_idle_timeout_ends_a_flow_and_starts_another():
    early = pg.udp_flow(CLIENT, SERVER, [("client", b"a")] * 2, start_ns=T0, gap_ns=S)
    late = pg.udp_flow(CLIENT, SERVER, [("client", b"b")], start_ns=T0 + 10 * S)
    flows, meter = run(early + late, idle_timeout=5)
    assert [f.packets for f in flows] == [2, 1]
    assert [f.end_reason for f in flows] == ["idle", "end"]
    assert meter.counts["idle"] == 1


def test_idle_flows_are_exported_as_packet_time_passes():
    a = pg.udp_flow(("10.0.0.5", 1), SERVER, [("client", b"a")], start_ns=T0)
    b = pg.udp_flow(("10.0.0.6", 1), SERVER, [("client", b"b")] * 3, start_ns=T0 + S, gap_ns=2 * S)
    meter = FlowMeter(FlowConfig(idle_timeout=3), FeatureConfig())
    meter.add(batch(a + b))
    done = meter.pop_finished()
    # the first flow is idle 3 s after its packet; the packet at T0 + 5 s ends it
    assert [(f.src, f.end_reason) for f in done] == [("10.0.0.5", "idle")]
    assert len(meter) == 1
    meter.advance(T0 + 9 * S)  # a quiet link: the clock alone expires the other
    assert [f.src for f in meter.pop_finished()] == ["10.0.0.6"] and len(meter) == 0


def test_max_duration_cuts_a_long_flow():
    sent = pg.udp_flow(CLIENT, SERVER, [("client", b"x")] * 7, start_ns=T0, gap_ns=S)
    flows, _ = run(sent, max_duration=2.5, idle_timeout=100)
    assert [f.packets for f in flows] == [3, 3, 1]
    assert [f.end_reason for f in flows] == ["active", "active", "end"]


def test_max_flows_evicts_the_least_recently_active_and_counts_it():
    sent = []
    for i in range(4):
        sent += pg.udp_flow((f"10.0.1.{i}", 1), SERVER, [("client", b"x")], start_ns=T0 + i * S)
    sent += pg.udp_flow(("10.0.1.0", 1), SERVER, [("client", b"y")], start_ns=T0 + 5 * S)
    flows, meter = run(sent, max_flows=2)
    assert meter.counts["evicted"] == 3
    evicted = [f.src for f in flows if f.end_reason == "evicted"]
    assert evicted == ["10.0.1.0", "10.0.1.1", "10.0.1.2"]
    assert sorted(f.packets for f in flows) == [1, 1, 1, 1, 1]


def test_ready_is_reported_once_at_k_packets_and_counting_goes_on():
    meter = FlowMeter(FlowConfig(ready_packets=3), FeatureConfig())
    sent = pg.udp_flow(CLIENT, SERVER, [("client", b"x")] * 5, start_ns=T0)
    meter.add(batch(sent[:2]))
    assert meter.pop_ready() == []
    meter.add(batch(sent[2:]))
    (ready,) = meter.pop_ready()
    assert ready.packets == 5  # the same flow object, still counted after being ready
    assert meter.pop_ready() == [] and meter.flush()[0] is ready


def test_later_fragments_join_the_flow_of_the_first():
    seg = pg.udp(1111, 2222, bytes(64)).with_checksum(pg.addr("10.0.0.1"), pg.addr("10.0.0.2"))
    first = pg.ipv4(
        "10.0.0.1",
        "10.0.0.2",
        seg[:32],
        proto=17,
        ident=9,
        more_fragments=True,
        dont_fragment=False,
    )
    later = pg.ipv4(
        "10.0.0.1", "10.0.0.2", seg[32:], proto=17, ident=9, fragment_offset=32, dont_fragment=False
    )
    orphan = pg.ipv4(
        "10.0.0.1",
        "10.0.0.2",
        seg[32:],
        proto=17,
        ident=10,
        fragment_offset=32,
        dont_fragment=False,
    )
    frames = [(T0, first, 101), (T0 + 1, later, 101), (T0 + 2, orphan, 101)]
    meter = FlowMeter(FlowConfig(), FeatureConfig())
    flows = list(meter.run([PacketBatch.from_frames(frames)]))
    ports = sorted((f.sport, f.dport, f.packets) for f in flows)
    assert ports == [(0, 0, 1), (1111, 2222, 2)]


def test_non_ip_and_broken_packets_are_not_counted_in_flows():
    arp = pg.ethernet(bytes(28), ethertype=0x0806)
    frames = [(T0, arp, 1), *((t, f, 1) for t, f in pg.frames(conversation(1, 0)))]
    flows = list(FlowMeter(FlowConfig(mode="bidirectional")).run([PacketBatch.from_frames(frames)]))
    assert [f.packets for f in flows] == [4]


def test_flow_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="mode"):
        FlowConfig(mode="both")
    with pytest.raises(ConfigError, match="positive"):
        FlowConfig(idle_timeout=0)
    with pytest.raises(ConfigError, match="max_flows"):
        FlowConfig(max_flows=0)


def _flow_record(f):
    return (
        f.key,
        f.rev,
        f.first_ns,
        f.last_ns,
        f.packets,
        f.bytes,
        f.end_reason,
        f.ts,
        f.sizes,
        f.headers,
        f.payloads,
        f.dirs,
        f.src_mac,
        f.dst_mac,
        f.source,
    )


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # endpoint pair
            st.booleans(),  # direction
            st.sampled_from([6, 17]),
            st.integers(-2 * S, 4 * S),  # time step (negative: out of order)
            st.integers(0, 60),  # payload length
            st.integers(0, 3),  # batch break / advance
        ),
        max_size=80,
    ),
    st.sampled_from(["unidirectional", "bidirectional"]),
    st.integers(1, 6),  # idle timeout (s)
    st.integers(1, 12),  # max duration (s)
    st.one_of(st.none(), st.integers(1, 4)),  # max flows
    st.one_of(st.none(), st.integers(1, 6)),  # ready packets
)
def test_native_meter_gives_the_same_flows_as_the_python_meter(
    steps, mode, idle, active, max_flows, ready
):
    if native() is None:
        pytest.skip("native packet kernel not built")
    config = FlowConfig(
        mode=mode, idle_timeout=idle, max_duration=active, max_flows=max_flows, ready_packets=ready
    )
    features = FeatureConfig(n_packets=3, header_bytes=30, payload_bytes=10, seq_len=5)
    meters = [FlowMeter(config, features, "f", native=flag) for flag in (True, False)]
    t = T0
    batches, current = [], []
    for pair, forward, proto, step, size, brk in steps:
        t += step
        a, b = (f"10.0.0.{pair}", 1000 + pair), ("10.0.1.1", 80 + pair % 2)
        seg = (pg.tcp if proto == 6 else pg.udp)(
            *((a[1], b[1]) if forward else (b[1], a[1])), bytes(size)
        )
        ip = pg.ip(a[0], b[0], seg) if forward else pg.ip(b[0], a[0], seg)
        current.append((t, pg.ethernet(ip), 1))
        if brk == 0:
            batches.append(current)
            current = []
        elif brk == 1:
            batches.append(current)
            batches.append(t + idle * S // 2)  # a quiet moment: the clock moves alone
            current = []
    batches.append(current)
    results = []
    for meter in meters:
        out, ready = [], []
        for item in batches:
            if isinstance(item, int):
                meter.advance(item)
            else:
                meter.add(PacketBatch.from_frames(item))
            out += meter.pop_finished()
            ready += [(f.key, f.first_ns) for f in meter.pop_ready()]
        out += meter.flush()
        results.append(([_flow_record(f) for f in out], ready, dict(meter.counts)))
    assert results[0] == results[1]


def test_native_meter_matches_python_with_many_flows_evictions_and_reuse():
    """Thousands of flows: the native table grows, reuses slots and buckets."""
    if native() is None:
        pytest.skip("native packet kernel not built")
    rng = np.random.default_rng(7)
    frames = []
    t = T0
    for _ in range(12_000):
        t += int(rng.integers(-S // 100, S // 20))
        host = int(rng.integers(0, 3000))
        ip = pg.ip(
            f"10.{host // 250}.{host % 250}.1", "192.0.2.1", pg.udp(1000 + host % 7, 53, b"q")
        )
        frames.append((t, ip, 101))
    config = FlowConfig(idle_timeout=2, max_duration=5, max_flows=75, ready_packets=3)
    out = []
    for flag in (True, False):
        meter = FlowMeter(config, FeatureConfig(), native=flag)
        flows = []
        for k in range(0, len(frames), 997):
            meter.add(PacketBatch.from_frames(frames[k : k + 997]))
            flows += meter.pop_finished()
        flows += meter.flush()
        out.append(([_flow_record(f) for f in flows], dict(meter.counts)))
    assert out[0] == out[1]
    assert out[0][1]["evicted"] > 0 and out[0][1]["idle"] > 0 and out[0][1]["flows"] > 3000
