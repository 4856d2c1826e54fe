"""De-biasing switches, each checked on exact bytes computed by hand, through both the native
kernel and the Python reference, which must agree on any input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pcapgen as pg
from netmamba.capture.batch import native
from netmamba.config import ConfigError
from netmamba.debias import DebiasConfig, apply_debias

N_H, N_P = 80, 120
NONE = DebiasConfig.none()


@pytest.fixture(params=["python", "native"])
def impl(request):
    if request.param == "native" and native() is None:
        pytest.skip("native packet kernel not built")
    return request.param == "native"


def run(packets, config, impl, n_h=N_H, n_p=N_P):
    """De-bias one flow given as [(ip_bytes, header_length, direction)]; returns the
    (header, payload) regions afterwards, with the lengths that were copied."""
    m = len(packets)
    mat = np.zeros((1, m * (n_h + n_p)), np.uint8)
    hl = np.zeros((1, m), np.uint16)
    pl = np.zeros((1, m), np.uint16)
    dirs = np.zeros((1, m), np.int8)
    for j, (ip, header_len, direction) in enumerate(packets):
        h, p = ip[:header_len][:n_h], ip[header_len:][:n_p]
        base = j * (n_h + n_p)
        mat[0, base : base + len(h)] = list(h)
        mat[0, base + n_h : base + n_h + len(p)] = list(p)
        hl[0, j], pl[0, j], dirs[0, j] = len(h), len(p), direction
    apply_debias(mat, hl, pl, dirs, n_h, n_p, config, use_native=impl)
    out = []
    for j in range(m):
        base = j * (n_h + n_p)
        out.append(
            (
                bytes(mat[0, base : base + hl[0, j]]),
                bytes(mat[0, base + n_h : base + n_h + pl[0, j]]),
            )
        )
    return out


def patched(data: bytes, **fields: bytes | tuple[int, bytes]) -> bytes:
    """`data` with bytes replaced: name=(offset, new_bytes)."""
    out = bytearray(data)
    for offset, new in fields.values():
        out[offset : offset + len(new)] = new
    return bytes(out)


def tcp4(src="192.0.2.10", dst="198.51.100.20", sport=51000, dport=443, payload=b"", **kw):
    return pg.ip(src, dst, pg.tcp(sport, dport, payload, **kw), ttl=57, ident=0x1234, tos=0x28)


# --- IP layer -------------------------------------------------------------------------------


def test_ipv4_addresses_zeroed(impl):
    ip = tcp4()
    ((h, _),) = run([(ip, 40, 1)], NONE.replace(ip_addresses="zero"), impl)
    assert h == patched(ip[:40], a=(12, bytes(8)))


def test_ipv4_addresses_relative_follow_the_direction(impl):
    up, down = tcp4(), tcp4("198.51.100.20", "192.0.2.10", 443, 51000)
    (h1, _), (h2, _) = run(
        [(up, 40, 1), (down, 40, -1)], NONE.replace(ip_addresses="relative"), impl
    )
    assert h1[12:20] == bytes([0, 0, 0, 0, 0, 0, 0, 1])  # client 0.0.0.0 -> server 0.0.0.1
    assert h2[12:20] == bytes([0, 0, 0, 1, 0, 0, 0, 0])
    assert h1[:12] == up[:12] and h1[20:] == up[20:40]


def test_ipv6_addresses_relative(impl):
    ip = pg.ip("2001:db8::5", "2001:db8::9", pg.udp(1, 2, b"x"))
    ((h, _),) = run([(ip, 48, -1)], NONE.replace(ip_addresses="relative"), impl)
    assert h[8:24] == bytes(15) + b"\x01" and h[24:40] == bytes(16)  # from the server
    assert h[:8] == ip[:8] and h[40:] == ip[40:48]


def test_ttl_id_checksum_and_tos_fields(impl):
    ip = tcp4()
    assert ip[1] == 0x28 and ip[8] == 57 and ip[4:6] == b"\x12\x34" and ip[10:12] != b"\0\0"
    cases = {
        "ttl": patched(ip[:40], a=(8, b"\0")),
        "ipv4_id": patched(ip[:40], a=(4, b"\0\0")),
        "ip_tos": patched(ip[:40], a=(1, b"\0")),
        "checksums": patched(ip[:40], a=(10, b"\0\0"), b=(36, b"\0\0")),  # IP and TCP checksums
        "tcp_window": patched(ip[:40], a=(34, b"\0\0")),
    }
    for switch, expected in cases.items():
        ((h, _),) = run([(ip, 40, 1)], NONE.replace(**{switch: True}), impl)
        assert h == expected, switch


def test_ipv6_hop_limit_flow_label_and_traffic_class(impl):
    ip = pg.ipv6(
        "2001:db8::1",
        "2001:db8::2",
        pg.udp(1, 2, b"x"),
        hop_limit=33,
        traffic_class=0xB8,
        flow_label=0xABCDE,
    )
    assert ip[:4] == bytes([0x6B, 0x8A, 0xBC, 0xDE]) and ip[7] == 33
    ((h, _),) = run([(ip, 48, 1)], NONE.replace(ttl=True), impl)
    assert h == patched(ip[:48], a=(7, b"\0"))
    ((h, _),) = run([(ip, 48, 1)], NONE.replace(ipv6_flow_label=True), impl)
    assert h[:4] == bytes([0x6B, 0x80, 0, 0]) and h[4:] == ip[4:48]
    ((h, _),) = run([(ip, 48, 1)], NONE.replace(ip_tos=True), impl)
    assert h[:4] == bytes([0x60, 0x0A, 0xBC, 0xDE])


def test_udp_and_icmp_checksums(impl):
    u = pg.ip("10.0.0.1", "10.0.0.2", pg.udp(5, 6, b"data"))
    ((h, p),) = run([(u, 28, 1)], NONE.replace(checksums=True), impl)
    assert h == patched(u[:28], a=(10, b"\0\0"), b=(26, b"\0\0")) and p == b"data"
    i = pg.ip("10.0.0.1", "10.0.0.2", pg.icmp_echo(7, 1, b"ping"))
    ((h, _),) = run([(i, 28, 1)], NONE.replace(checksums=True), impl)
    assert h == patched(i[:28], a=(10, b"\0\0"), b=(22, b"\0\0"))


# --- transport ------------------------------------------------------------------------------


def test_ports_zero_and_relative(impl):
    up, down = tcp4(), tcp4("198.51.100.20", "192.0.2.10", 443, 51000)
    ((h, _),) = run([(up, 40, 1)], NONE.replace(ports="zero"), impl)
    assert h == patched(up[:40], a=(20, bytes(4)))
    (h1, _), (h2, _) = run([(up, 40, 1), (down, 40, -1)], NONE.replace(ports="relative"), impl)
    assert h1[20:24] == b"\0\0\0\1" and h2[20:24] == b"\0\1\0\0"  # client port 0, server 1


def _seq_ack(h: bytes) -> tuple[int, int]:
    return struct.unpack("!II", h[24:32])


def test_tcp_seq_ack_relative_per_direction(impl):
    c, s = ("10.0.0.1", "10.0.0.2")
    pkts = [
        (pg.ip(c, s, pg.tcp(1, 2, seq=1000, ack=12345, flags=pg.SYN)), 40, 1),
        (pg.ip(s, c, pg.tcp(2, 1, seq=5000, ack=1001, flags=pg.SYN | pg.ACK)), 40, -1),
        (pg.ip(c, s, pg.tcp(1, 2, seq=1001, ack=5001, flags=pg.ACK)), 40, 1),
        (pg.ip(c, s, pg.tcp(1, 2, b"x" * 10, seq=1001, ack=5001)), 40, 1),
        (pg.ip(s, c, pg.tcp(2, 1, b"y" * 7, seq=5001, ack=1011)), 40, -1),
    ]
    out = run(pkts, NONE.replace(tcp_seq_ack="relative"), impl)
    # seq: minus the first seq of its direction; ack: minus the first ack (with the ACK flag)
    # of its direction; an ack without the ACK flag is zeroed
    assert [_seq_ack(h) for h, _ in out] == [(0, 0), (0, 0), (1, 0), (1, 0), (1, 10)]
    assert [h[:24] + h[32:] for h, _ in out] == [ip[:24] + ip[32:40] for ip, _, _ in pkts]
    zeroed = run(pkts[:1], NONE.replace(tcp_seq_ack="zero"), impl)
    assert _seq_ack(zeroed[0][0]) == (0, 0)


def test_tcp_seq_relative_wraps_around_2_to_the_32(impl):
    a = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 2, seq=0xFFFFFFF0, flags=pg.ACK, ack=1))
    b = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 2, seq=0x10, flags=pg.ACK, ack=1))
    out = run([(a, 40, 1), (b, 40, 1)], NONE.replace(tcp_seq_ack="relative"), impl)
    assert _seq_ack(out[1][0]) == (0x20, 0)


def test_tcp_timestamp_option_relative_and_zero(impl):
    def pkt(tsval, tsecr, d):
        return (
            pg.ip(
                "10.0.0.1", "10.0.0.2", pg.tcp(1, 2, options=pg.tcp_timestamp_option(tsval, tsecr))
            ),
            52,
            d,
        )

    pkts = [pkt(1000, 0, 1), pkt(77000, 1000, -1), pkt(1010, 77000, 1), pkt(1030, 77005, 1)]
    out = run(pkts, NONE.replace(tcp_timestamps="relative"), impl)
    # options at 40: NOP NOP kind=8 len=10, TSval at 44, TSecr at 48
    values = [struct.unpack("!II", h[44:52]) for h, _ in out]
    assert values == [(0, 0), (0, 0), (10, 0), (30, 5)]  # TSecr 0 stays 0, not a base
    assert all(h[:44] == ip[:44] for (h, _), (ip, _, _) in zip(out, pkts, strict=True))
    out = run(pkts[1:2], NONE.replace(tcp_timestamps="zero"), impl)
    assert out[0][0][44:52] == bytes(8)


def test_a_field_cut_by_the_header_crop_is_zeroed_where_visible(impl):
    ip = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 2, seq=0x01020304, ack=9, flags=pg.ACK))
    ((h, _),) = run([(ip, 40, 1)], NONE.replace(tcp_seq_ack="relative"), impl, n_h=26)
    assert h == ip[:24] + b"\0\0"  # seq starts at 24: 2 of its 4 bytes visible, unreadable
    ((h, _),) = run([(ip, 40, 1)], NONE.replace(ports="relative"), impl, n_h=23)
    assert h == ip[:20] + b"\0\0\0"  # constants are written where visible


def test_later_fragments_have_no_transport_fields_to_change(impl):
    ip = pg.ipv4(
        "10.0.0.1",
        "10.0.0.2",
        b"\x11\x22\x33\x44" * 4,
        proto=6,
        fragment_offset=8,
        dont_fragment=False,
    )
    ((h, p),) = run(
        [(ip, 20, 1)],
        DebiasConfig(ip_addresses="keep", checksums=False, ttl=False, ipv4_id=False),
        impl,
    )
    assert h == ip[:20] and p == ip[20:]


# --- TLS ------------------------------------------------------------------------------------


def test_tls_sni_is_masked_with_the_same_length(impl):
    hello = pg.tls_client_hello("video.example.com")
    ip = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 443, hello))
    name_at = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 2 + 2 + 2 + 8 + 4 + 2 + 1 + 2  # counted by hand
    assert hello[name_at : name_at + 17] == b"video.example.com"
    ((h, p),) = run([(ip, 40, 1)], NONE.replace(tls_sni=True), impl, n_p=200)
    assert p == hello[:name_at] + bytes(17) + hello[name_at + 17 :]
    assert h == ip[:40]
    ((_, p),) = run([(ip, 40, 1)], NONE.replace(tls_sni=True), impl, n_p=name_at + 5)
    assert p == hello[:name_at] + bytes(5)  # the visible part of a cropped name


def test_tls_random_and_session_id(impl):
    hello = pg.tls_client_hello("a.b")
    ip = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 443, hello))
    ((_, p),) = run([(ip, 40, 1)], NONE.replace(tls_random=True), impl, n_p=200)
    # random at 11..43, session id length at 43, session id 44..76
    assert p == hello[:11] + bytes(32) + hello[43:44] + bytes(32) + hello[76:]


def test_tls_is_only_read_from_tcp_payloads_that_start_a_handshake(impl):
    hello = pg.tls_client_hello("x.org")
    udp = pg.ip("10.0.0.1", "10.0.0.2", pg.udp(1, 443, hello))
    shifted = pg.ip("10.0.0.1", "10.0.0.2", pg.tcp(1, 443, b"\0" + hello))
    for ip, hl in ((udp, 28), (shifted, 40)):
        ((_, p),) = run([(ip, hl, 1)], NONE.replace(tls_sni=True, tls_random=True), impl, n_p=200)
        assert p == ip[hl:]


# --- configuration and agreement ------------------------------------------------------------


def test_default_set_and_switch_parsing():
    d = DebiasConfig()
    assert (d.ip_addresses, d.ports, d.tcp_seq_ack, d.tcp_timestamps) == ("relative",) * 4
    assert d.checksums and d.ttl and d.ipv4_id and d.ipv6_flow_label and d.tls_sni
    assert not (d.tcp_window or d.tls_random or d.ip_tos)
    assert d.set("tcp-window=on").tcp_window is True
    assert d.set("ports=zero").ports == "zero"
    assert NONE.is_noop() and not d.is_noop()
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        d.set("colour=red")
    with pytest.raises(ConfigError, match="on/off"):
        d.set("ttl=maybe")
    with pytest.raises(ConfigError, match="keep, zero, relative"):
        d.set("ports=shuffle")
    assert DebiasConfig.from_json(d.to_json()) == d


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=60), st.binary(max_size=40), st.sampled_from([1, -1])),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["keep", "zero", "relative"]),
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.sampled_from([b"", b"\x45", b"\x46", b"\x60", b"\x16\x03"]),
)
def test_native_and_python_agree_on_random_regions(packets, mode, flags, lead):
    if native() is None:
        pytest.skip("native packet kernel not built")
    config = DebiasConfig(mode, mode, mode, mode, *flags)
    n_h, n_p = 60, 40
    m = len(packets)
    mat = np.zeros((2, m * (n_h + n_p)), np.uint8)
    hl = np.zeros((2, m), np.uint16)
    pl = np.zeros((2, m), np.uint16)
    dirs = np.zeros((2, m), np.int8)
    for j, (h, p, d) in enumerate(packets):
        h = (lead + h)[:n_h]
        p = (lead + p)[:n_p] if len(lead) == 2 else p
        base = j * (n_h + n_p)
        mat[:, base : base + len(h)] = list(h)
        mat[:, base + n_h : base + n_h + len(p)] = list(p)
        hl[:, j], pl[:, j], dirs[:, j] = len(h), len(p), d
    a, b = mat[:1].copy(), mat[1:].copy()
    apply_debias(a, hl[:1], pl[:1], dirs[:1], n_h, n_p, config, use_native=True)
    apply_debias(b, hl[1:], pl[1:], dirs[1:], n_h, n_p, config, use_native=False)
    assert np.array_equal(a, b)
