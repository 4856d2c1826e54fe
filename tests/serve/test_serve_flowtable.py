"""The service's flow table over the real flow meter: each flow handed over exactly once, as
soon as it has what the model reads or when it ends, with the arrays the offline path makes."""

from __future__ import annotations

import numpy as np
import pytest

import pcapgen
from netmamba.capture import PacketBatch
from netmamba.capture.batch import native
from netmamba.debias import DebiasConfig
from netmamba.features import FeatureConfig, flow_arrays
from netmamba.flows import FlowConfig, FlowMeter
from netmamba.serve.flowtable import FlowTableConfig, MeterFlowTable

S = 1_000_000_000
T0 = 1_700_000_000 * S
METERS = [
    pytest.param(False, id="python"),
    pytest.param(True, id="native", marks=pytest.mark.skipif(native() is None, reason="not built")),
]


def udp_packets(sport: int, n: int, start_s: float = 0.0, gap_s: float = 0.001) -> list:
    """(ts_ns, frame, linktype) of n UDP datagrams 10.0.0.1:sport -> 10.0.0.2:53, datagram k
    carrying k + 1 bytes: IP length 20 + 8 + k + 1."""
    return [
        (
            T0 + int((start_s + k * gap_s) * S),
            pcapgen.ethernet(pcapgen.ip("10.0.0.1", "10.0.0.2", pcapgen.udp(sport, 53, b"x" *
                                                                            (k + 1)))),
            1,
        )
        for k in range(n)
    ]  # fmt: skip


def ip_bytes(n: int) -> int:
    return sum(29 + k for k in range(n))


def table(native_meter: bool, **config: object) -> MeterFlowTable:
    return MeterFlowTable(
        FlowConfig(idle_timeout=1.0),
        FeatureConfig(),
        DebiasConfig(),
        FlowTableConfig(**config),  # type: ignore[arg-type]
        source="test.pcap",
        native=native_meter,
    )


def feed(t: MeterFlowTable, packets: list, chunk: int = 7) -> list:
    """Packets in time order, `chunk` at a time (flows straddle batches); all handed over."""
    packets = sorted(packets, key=lambda p: p[0])
    out = []
    for i in range(0, len(packets), chunk):
        out += t.add(PacketBatch.from_frames(packets[i : i + chunk]))
    return out


def offline_arrays(packets: list) -> dict[int, dict[str, np.ndarray]]:
    """Arrays of each flow (by source port) as the offline path makes them."""
    meter = FlowMeter(FlowConfig(idle_timeout=1.0), FeatureConfig(), native=False)
    flows = list(meter.run([PacketBatch.from_frames(sorted(packets, key=lambda p: p[0]))]))
    arrays = flow_arrays(flows, FeatureConfig(), DebiasConfig())
    return {f.sport: {k: v[i] for k, v in arrays.items()} for i, f in enumerate(flows)}


@pytest.mark.parametrize("native_meter", METERS)
def test_a_long_flow_is_handed_over_once_when_ready_with_the_offline_arrays(
    native_meter: bool,
) -> None:
    packets = udp_packets(1000, 50) + udp_packets(2000, 3, start_s=0.0005)
    t = table(native_meter, ready_packets=20)
    early = feed(t, packets)
    assert [f.src_port for f in early] == [1000]  # ready at its 20th packet
    ready = early[0]
    assert not ready.short and ready.packets >= 20  # counted so far (the batch it ended in)
    assert (ready.src_ip, ready.dst_ip, ready.dst_port, ready.protocol) == (
        "10.0.0.1", "10.0.0.2", 53, 17)  # fmt: skip
    assert ready.source == "test.pcap" and ready.first_ts_ns == T0
    rest = t.flush()
    assert [f.src_port for f in rest] == [2000]  # the long flow is not handed over again
    short = rest[0]
    assert short.short and short.packets == 3 and short.bytes == ip_bytes(3)
    expected = offline_arrays(packets)
    for flow in (ready, short):
        for name, value in expected[flow.src_port].items():
            np.testing.assert_array_equal(flow.arrays[name], value, err_msg=name)
    assert t.flows_seen == 2 and t.active_flows == 0


@pytest.mark.parametrize("native_meter", METERS)
def test_idle_flows_are_handed_over_when_time_passes(native_meter: bool) -> None:
    t = table(native_meter)
    assert feed(t, udp_packets(1000, 4)) == []
    assert t.expire(T0 + int(0.5 * S)) == []  # idle 0.5 s < 1 s
    (idle,) = t.expire(T0 + 2 * S)
    assert idle.src_port == 1000 and idle.short and idle.packets == 4
    assert idle.bytes == ip_bytes(4) and idle.last_ts_ns == T0 + 3 * S // 1000
    assert t.flush() == []


@pytest.mark.parametrize("native_meter", METERS)
def test_a_full_table_evicts_the_least_recent_flow_which_is_classified(
    native_meter: bool,
) -> None:
    t = table(native_meter, max_flows=2)
    packets = udp_packets(1, 2) + udp_packets(2, 2, start_s=0.01) + udp_packets(3, 2, 0.02)
    out = feed(t, packets, chunk=100)
    assert [f.src_port for f in out] == [1]
    assert out[0].packets == 2 and t.flows_evicted == 1
    assert sorted(f.src_port for f in t.flush()) == [2, 3]
    assert t.flows_evicted == 1


@pytest.mark.parametrize("chunk", [1, 5, 100])
@pytest.mark.parametrize("native_meter", METERS)
def test_deadline_classifies_with_what_a_flow_has_and_only_once(
    native_meter: bool, chunk: int
) -> None:
    # 30 packets 10 ms apart; deadline 0.105 s: the packets at 0..100 ms are what it has,
    # whatever the batches (cut where the deadline falls).
    t = table(native_meter, ready_packets=20, classify_within_s=0.105)
    packets = udp_packets(1000, 30, gap_s=0.01) + udp_packets(2000, 2, start_s=0.2)
    out = feed(t, packets, chunk=chunk)
    assert [f.src_port for f in out] == [1000]
    (due,) = out
    assert due.short and due.packets == 11 and due.bytes == ip_bytes(11)
    assert due.arrays["seq_mask"].sum() == 11
    assert [f.src_port for f in t.flush()] == [2000]  # flow 1000 not again when it ends
    assert t.flows_deadline == 1


@pytest.mark.parametrize("native_meter", METERS)
def test_flows_of_protocols_the_model_never_saw_are_counted_not_classified(
    native_meter: bool,
) -> None:
    echo = [
        (T0 + k * S // 1000, pcapgen.ethernet(pcapgen.ip("10.0.0.1", "10.0.0.3",
                                                          pcapgen.icmp_echo(7, k))), 1)
        for k in range(3)
    ]  # fmt: skip
    packets = udp_packets(1, 3) + echo  # a UDP flow to port 53 (DNS) and an ICMP one
    for protocol_filter, kept, other in (("none", 2, 0), ("tcp_udp", 1, 1), ("paper", 0, 2)):
        t = table(native_meter, protocol_filter=protocol_filter)
        feed(t, packets)
        assert len(t.flush()) == kept, protocol_filter
        assert t.flows_other_protocol == other and t.flows_too_short == 0
    t = table(native_meter, protocol_filter="paper", include_short=True)
    feed(t, packets)
    assert len(t.flush()) == 2 and t.flows_other_protocol == 0


@pytest.mark.parametrize("native_meter", METERS)
def test_flows_shorter_than_the_models_training_flows_are_counted_not_classified(
    native_meter: bool,
) -> None:
    packets = udp_packets(1, 1) + udp_packets(2, 2) + udp_packets(3, 3)
    t = table(native_meter, min_packets=3)
    feed(t, packets)
    assert [f.src_port for f in t.flush()] == [3]
    assert t.flows_too_short == 2
    t = table(native_meter, min_packets=3, include_short=True)
    feed(t, packets)
    assert sorted(f.src_port for f in t.flush()) == [1, 2, 3]
    assert t.flows_too_short == 0


@pytest.mark.parametrize("native_meter", METERS)
def test_each_capture_of_several_is_metered_on_its_own(native_meter: bool) -> None:
    t = table(native_meter)
    assert t.next_capture("a.pcap") == []
    feed(t, udp_packets(1000, 3))
    # The same 5-tuple in the next capture is another flow, and ends the first.
    (first,) = t.next_capture("b.pcap")
    assert first.source == "a.pcap" and first.packets == 3
    feed(t, udp_packets(1000, 2, start_s=0.5))
    (second,) = t.flush()
    assert second.source == "b.pcap" and second.packets == 2
    assert t.flows_seen == 2


@pytest.mark.parametrize("native_meter", METERS)
def test_a_classified_flow_keeps_no_packets(native_meter: bool) -> None:
    t = table(native_meter, ready_packets=20)
    (ready,) = feed(t, udp_packets(1000, 200), chunk=50)
    held = list(t._early.values())  # handed over, still open: the meter keeps counting it
    assert len(held) == 1
    assert held[0].headers == [] and held[0].payloads == [] and held[0].ts == []
    assert ready.arrays["seq_mask"].all()


def test_live_frames_are_parsed_by_the_table() -> None:
    t = table(None, ready_packets=3)  # type: ignore[arg-type]
    (flow,) = t.add(udp_packets(7, 3))  # (ts_ns, frame, linktype) as the live capture gives
    assert (flow.src_port, flow.packets, flow.short) == (7, 3, False)


def test_bad_settings_are_refused() -> None:
    from netmamba.config import ConfigError

    with pytest.raises(ConfigError, match="classify_within_s must be positive"):
        FlowTableConfig(classify_within_s=0)
    with pytest.raises(ConfigError, match="protocol_filter must be one of paper, tcp_udp, none"):
        FlowTableConfig(protocol_filter="udp")
    with pytest.raises(ConfigError, match="ready_packets and min_packets must be >= 1"):
        FlowTableConfig(ready_packets=0)
