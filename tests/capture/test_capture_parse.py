"""Header parsing: offsets from the headers of every link type, IPv4 options and fragments,
IPv6 extension headers; the native parser agrees with the Python reference."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import pcapgen as pg
from netmamba.capture import PacketBatch, flow_key, parse_frame
from netmamba.capture.batch import PACKET_DTYPE, native, parse_records_python
from netmamba.capture.parse import FIELDS

PAYLOAD = b"0123456789abcdef"


def one(frame: bytes, linktype: int):
    return PacketBatch.from_frames([(1, frame, linktype)]).packet(0)


def _tcp_ip4(**kw):
    return pg.ip("192.0.2.1", "198.51.100.7", pg.tcp(40000, 443, PAYLOAD, seq=5), **kw)


@pytest.mark.parametrize(
    ("linktype", "kw", "ip_offset"),
    [
        (pg.LINKTYPE_ETHERNET, {}, 14),
        (pg.LINKTYPE_ETHERNET, {"vlans": (10,)}, 18),
        (pg.LINKTYPE_ETHERNET, {"vlans": (10, 20), "qinq": True}, 22),
        (pg.LINKTYPE_LINUX_SLL, {}, 16),
        (pg.LINKTYPE_LINUX_SLL2, {}, 20),
        (pg.LINKTYPE_NULL, {}, 4),
        (pg.LINKTYPE_NULL, {"big_endian": True}, 4),
        (pg.LINKTYPE_LOOP, {}, 4),
        (pg.LINKTYPE_RAW, {}, 0),
        (pg.LINKTYPE_IPV4, {}, 0),
    ],
)
def test_link_layers_lead_to_the_same_ip_packet(linktype, kw, ip_offset):
    ip = _tcp_ip4()
    p = one(pg.link(linktype, ip, **kw), linktype)
    assert p.status == "ok"
    assert p.ip_offset == ip_offset
    assert p.ip == ip  # Ethernet padding is never part of the IP packet
    assert (p.src, p.dst, p.sport, p.dport, p.proto) == ("192.0.2.1", "198.51.100.7", 40000, 443, 6)
    assert p.payload == PAYLOAD
    assert p.ip_len == len(ip)


def test_mac_addresses_come_from_the_link_header():
    ip = _tcp_ip4()
    p = one(pg.ethernet(ip, src_mac=b"\xaa" * 6, dst_mac=b"\xbb" * 6), pg.LINKTYPE_ETHERNET)
    assert (p.src_mac, p.dst_mac) == (b"\xaa" * 6, b"\xbb" * 6)
    p = one(pg.linux_sll(ip, src_mac=b"\xcc" * 6), pg.LINKTYPE_LINUX_SLL)
    assert (p.src_mac, p.dst_mac) == (b"\xcc" * 6, None)
    assert one(ip, pg.LINKTYPE_RAW).src_mac is None


def test_ipv6_inside_other_links_and_the_ipv6_linktype():
    ip6 = pg.ip("2001:db8::1", "2001:db8::2", pg.udp(53, 5353, PAYLOAD))
    for linktype in (
        pg.LINKTYPE_ETHERNET,
        pg.LINKTYPE_LINUX_SLL,
        pg.LINKTYPE_NULL,
        pg.LINKTYPE_RAW,
        pg.LINKTYPE_IPV6,
    ):
        p = one(pg.link(linktype, ip6) if linktype != pg.LINKTYPE_IPV6 else ip6, linktype)
        assert (p.version, p.src, p.sport, p.payload) == (6, "2001:db8::1", 53, PAYLOAD)


def test_tcp_payload_split_uses_ip_options_and_data_offset():
    seg = pg.tcp(1, 2, PAYLOAD, options=pg.tcp_timestamp_option(7, 9))  # 12 option bytes
    ip = pg.ip("10.0.0.1", "10.0.0.2", seg, options=b"\x01\x01\x01\x00")  # 4 option bytes
    p = one(ip, pg.LINKTYPE_RAW)
    assert p.l4_offset == 24
    assert p.payload_offset == 24 + 32
    assert p.header == ip[:56] and p.payload == PAYLOAD


def test_ipv6_extension_headers_are_walked_to_the_transport_header():
    ip6 = pg.ip("2001:db8::1", "2001:db8::2", pg.udp(7, 8, PAYLOAD), extensions=(0, 43, 60))
    p = one(ip6, pg.LINKTYPE_RAW)
    assert (p.proto, p.l4_offset, p.payload_offset) == (17, 40 + 3 * 8, 40 + 3 * 8 + 8)
    assert (p.sport, p.dport, p.payload) == (7, 8, PAYLOAD)


def test_fragments_first_has_ports_later_has_none():
    seg = pg.udp(1111, 2222, bytes(range(64))).with_checksum(
        pg.addr("10.0.0.1"), pg.addr("10.0.0.2")
    )
    first = pg.ipv4(
        "10.0.0.1",
        "10.0.0.2",
        seg[:32],
        proto=17,
        ident=77,
        more_fragments=True,
        dont_fragment=False,
    )
    later = pg.ipv4(
        "10.0.0.1",
        "10.0.0.2",
        seg[32:],
        proto=17,
        ident=77,
        fragment_offset=32,
        dont_fragment=False,
    )
    a, b = one(first, 101), one(later, 101)
    assert (a.frag, a.sport, a.dport) == (1, 1111, 2222)
    assert (b.frag, b.sport, b.dport, b.payload_offset, b.payload) == (2, 0, 0, 20, seg[32:])
    v6_later = pg.ipv6("2001:db8::1", "2001:db8::2", seg[32:], proto=17, fragment=(9, 32, False))
    c = one(v6_later, 101)
    assert (c.frag, c.proto, c.l4_offset, c.payload) == (2, 17, 48, seg[32:])


def test_bad_and_truncated_headers_have_reasons():
    ip = _tcp_ip4()
    cases = {
        "truncated_link": (pg.ethernet(ip)[:10], 1),
        "truncated_ip": (ip[:15], 101),
        "bad_ip": (b"\x75" + ip[1:], 101),  # version 7
        "truncated_transport": (ip[:30], 101),
        "bad_transport": (ip[:32] + bytes([0x20]) + ip[33:], 101),  # data offset 2 words
    }
    for reason, (frame, linktype) in cases.items():
        assert one(frame, linktype).status == reason, reason
    ip4_on_v6_link = one(ip, pg.LINKTYPE_IPV6)
    assert ip4_on_v6_link.status == "bad_ip"


def test_flow_key_is_shared_by_both_directions_and_rev_tells_them_apart():
    a, b = pg.addr("10.0.0.9"), pg.addr("10.0.0.1")
    rev1, k1 = flow_key(4, 6, a, b, 5000, 80)
    rev2, k2 = flow_key(4, 6, b, a, 80, 5000)
    assert k1[1:] == k2[1:] and k1 != k2 and {rev1, rev2} == {0, 1}
    # endpoint a is the smaller (address, port): 10.0.0.1:80
    assert k2[4:6] == struct.pack("!H", 80) and k2[8:12] == b


def _compare_native(frames):
    if native() is None:
        pytest.skip("native packet kernel not built")
    batch = PacketBatch.from_frames(frames)  # parsed natively
    py = batch.packets.copy()
    parse_records_python(batch.buf, py)
    for name in PACKET_DTYPE.names:
        assert np.array_equal(py[name], batch.packets[name]), name


def test_native_parser_matches_python_on_generated_frames():
    ip4, ip6 = (
        _tcp_ip4(),
        pg.ip("2001:db8::1", "2001:db8::2", pg.udp(1, 2, PAYLOAD), extensions=(0, 60)),
    )
    frames = []
    for lt in (1, 101, 113, 276, 0, 108, 228, 229, 9, 104, 127):
        for ip in (ip4, ip6):
            try:
                frame = pg.link(lt, ip)
            except ValueError:
                frame = (b"\xff\x03\x00\x21" if lt == 9 else b"\x0f\x00\x08\x00") + ip
            for cut in (len(frame), 3, 17, 30, 41, 60):
                frames.append((1, frame[:cut], lt))
    _compare_native(frames)


def test_fields_tuple_matches_the_record_layout():
    assert set(FIELDS) <= set(PACKET_DTYPE.names)
    assert len(parse_frame(b"", 1)) == len(FIELDS)
