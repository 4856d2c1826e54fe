"""The sample arrays (SPEC section 2): exact bytes, lengths, sizes, IATs, masks, directions,
independence of the link type, and cropping to a smaller geometry."""

from __future__ import annotations

import numpy as np
import pytest

import pcapgen as pg
from netmamba.capture import PacketBatch
from netmamba.config import ConfigError
from netmamba.debias import DebiasConfig
from netmamba.features import ARRAY_NAMES, FeatureConfig, crop_arrays, flow_arrays
from netmamba.flows import FlowConfig, FlowMeter

S = 1_000_000_000
T0 = 1_700_000_000 * S
SMALL = FeatureConfig(n_packets=3, header_bytes=48, payload_bytes=16, seq_len=6, mtu=100)


def arrays_of(sent, features=SMALL, mode="bidirectional", linktype=1, debias=None, **kw):
    frames = pg.frames(sent, linktype, **kw)
    meter = FlowMeter(FlowConfig(mode=mode), features)
    flows = list(meter.run([PacketBatch.from_frames((t, f, linktype) for t, f in frames)]))
    return flow_arrays(flows, features, debias), flows


def session():
    return pg.tcp_session(
        ("10.0.0.1", 40000),
        ("10.0.0.2", 443),
        [("client", b"A" * 5), ("server", b"B" * 100)],
        start_ns=T0,
        gap_ns=S // 4,
        handshake=True,
    )


def test_bytes_are_header_then_payload_per_packet_cropped_and_padded():
    sent = session()
    a, _ = arrays_of(sent)
    b = a["bytes"][0].reshape(3, 64)
    # packet 0: SYN, 40-byte IP+TCP header, no payload
    assert bytes(b[0, :40]) == sent[0].ip[:40] and not b[0, 40:].any()
    # packet 2: the ACK; packets 3 and 4 (data) are beyond M_b = 3
    assert bytes(b[2, :40]) == sent[2].ip[:40]
    assert a["header_lens"][0].tolist() == [40, 40, 40]
    assert a["payload_lens"][0].tolist() == [0, 0, 0]
    a4, _ = arrays_of(sent, features=SMALL.replace(n_packets=5))
    b4 = a4["bytes"][0].reshape(5, 64)
    assert bytes(b4[3, 48:53]) == b"A" * 5 and not b4[3, 53:].any()  # padded payload
    assert bytes(b4[4, 48:]) == b"B" * 16  # cropped payload
    assert a4["payload_lens"][0].tolist() == [0, 0, 0, 5, 16]


def test_long_headers_are_cropped_at_n_h_and_payload_starts_after_the_real_header():
    seg = pg.tcp(1, 2, b"P" * 20, options=pg.tcp_timestamp_option(5, 6) * 3)  # 56-byte TCP header
    sent = [pg.Sent(T0, pg.ip("10.0.0.1", "10.0.0.2", seg), True)]
    a, _ = arrays_of(sent)
    b = a["bytes"][0].reshape(3, 64)
    assert bytes(b[0, :48]) == sent[0].ip[:48]  # 76 header bytes, 48 kept
    assert bytes(b[0, 48:]) == b"P" * 16  # never header bytes in the payload part
    assert a["header_lens"][0, 0] == 48


def test_missing_packets_are_zeros_and_the_masks_say_where_data_ends():
    sent = pg.udp_flow(("10.0.0.1", 5), ("10.0.0.2", 6), [("client", b"x")] * 2, start_ns=T0)
    a, _ = arrays_of(sent)
    assert not a["bytes"][0, 2 * 64 :].any()
    assert a["header_lens"][0].tolist() == [28, 28, 0]
    assert a["seq_mask"][0].tolist() == [True, True, False, False, False, False]
    assert a["sizes"][0].tolist() == [29, 29, 0, 0, 0, 0]


def test_sizes_are_ip_lengths_signed_by_direction_and_clipped_at_the_mtu():
    sent = session()
    a, _ = arrays_of(sent)
    lengths = [len(s.ip) for s in sent]
    assert lengths[4] == 140  # the server's 100-byte payload: clipped at MTU 100
    assert a["sizes"][0].tolist() == [40, -40, 40, 45, -100, 0]
    uni, _ = arrays_of(sent, mode="unidirectional")
    assert (uni["sizes"] >= 0).all()


def test_sizes_do_not_depend_on_the_link_type():
    sent = session()
    arrays = [arrays_of(sent, linktype=lt)[0] for lt in (1, 101, 113, 276, 0)]
    for other in arrays[1:]:
        for name in ARRAY_NAMES:
            assert np.array_equal(arrays[0][name], other[name]), name


def test_ethernet_vlan_and_padding_do_not_change_the_sample():
    sent = pg.udp_flow(("10.0.0.1", 5), ("10.0.0.2", 6), [("client", b"x")], start_ns=T0)
    plain, _ = arrays_of(sent, linktype=101)
    tagged, _ = arrays_of(sent, linktype=1, vlans=(7, 8))  # 60-byte minimum: trailer padding
    assert np.array_equal(plain["bytes"], tagged["bytes"])
    assert tagged["payload_lens"][0, 0] == 1


def test_iats_are_seconds_since_the_previous_packet_first_zero():
    sent = pg.udp_flow(("10.0.0.1", 5), ("10.0.0.2", 6), [("client", b"x")] * 3, start_ns=T0)
    sent = [
        pg.Sent(T0 + t, s.ip, True)
        for t, s in zip((0, 1_500_000, 2_000_000_000), sent, strict=True)
    ]
    a, _ = arrays_of(sent)
    assert a["iats"].dtype == np.float32
    np.testing.assert_allclose(a["iats"][0, :3], [0.0, 0.0015, 1.9985], rtol=1e-6)
    assert not a["iats"][0, 3:].any()


def test_out_of_order_timestamps_give_zero_gaps_not_negative_ones():
    sent = pg.udp_flow(("10.0.0.1", 5), ("10.0.0.2", 6), [("client", b"x")] * 3, start_ns=T0)
    sent = [pg.Sent(T0 + t, s.ip, True) for t, s in zip((0, 5 * S, 2 * S), sent, strict=True)]
    a, _ = arrays_of(sent)
    assert a["iats"][0, :3].tolist() == [0.0, 5.0, 0.0]


def test_dtypes_and_shapes_follow_the_contract():
    a, _ = arrays_of(session())
    expected = {
        "bytes": (np.uint8, (1, 192)),
        "header_lens": (np.uint16, (1, 3)),
        "payload_lens": (np.uint16, (1, 3)),
        "sizes": (np.int16, (1, 6)),
        "iats": (np.float32, (1, 6)),
        "seq_mask": (np.bool_, (1, 6)),
    }
    assert {k: (v.dtype.type, v.shape) for k, v in a.items()} == expected


def test_no_flows_gives_empty_arrays():
    a = flow_arrays([], SMALL, DebiasConfig(), keep_raw=True)
    assert a["bytes"].shape == (0, 192) and a["raw_bytes"].shape == (0, 192)


def test_crop_equals_a_fresh_extraction_with_the_smaller_geometry():
    sent = session()
    big = FeatureConfig(n_packets=5, header_bytes=60, payload_bytes=40, seq_len=8, mtu=1500)
    small = FeatureConfig(n_packets=4, header_bytes=32, payload_bytes=10, seq_len=3, mtu=60)
    none = DebiasConfig.none()
    full, _ = arrays_of(sent, features=big, debias=none)
    fresh, _ = arrays_of(sent, features=small, debias=none)
    cropped = crop_arrays(full, big, small)
    for name in ARRAY_NAMES:
        assert np.array_equal(cropped[name], fresh[name]), name
    with pytest.raises(ConfigError, match="cannot crop n_packets from 4 up to 5"):
        crop_arrays(full, small, big)
