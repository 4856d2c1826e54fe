"""Build packets and write capture files for tests (pcap, pcapng, gzip), with known bytes.

Layers compose from the inside out, so every byte a test checks is one it chose:

    seg = tcp(40000, 443, b"hello", seq=1000, ack=0, flags=SYN)      # transport segment
    pkt = ip("10.0.0.1", "10.0.0.2", seg, ttl=64)                    # IPv4 or IPv6 by address
    frm = ethernet(pkt, vlans=(100,))                                 # a link layer
    write_pcap(path, [(ts_ns, frm)], LINKTYPE_ETHERNET)

Conversations: `tcp_session(client, server, payloads, start_ns, gap_ns)` and `udp_flow(...)`
return `Sent` packets (timestamp, IP bytes, which side sent it); `frames(sent, linktype)` wraps
them in a link layer. Writers: `write_pcap` (either byte order, micro- or nanosecond
timestamps, optional gzip) and `write_pcapng` (several interfaces with their own link type and
timestamp resolution, enhanced and simple packet blocks, either byte order, optional gzip).

Checksums are computed for real (IPv4 header, TCP/UDP with the pseudo-header), so tests can
check that de-biasing zeroes them.
"""

from __future__ import annotations

import gzip as gzip_module
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# pcap link types
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4 / IPv6
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# TCP flags
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")


# ---------------------------------------------------------------------------------------------
# checksums and addresses


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def addr(text: str) -> bytes:
    """Packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    return ipaddress.ip_address(text).packed


# ---------------------------------------------------------------------------------------------
# transport layer


@dataclass(frozen=True)
class Segment:
    """A transport header and payload, before the IP layer fills in its checksum."""

    proto: int
    header: bytes
    payload: bytes
    checksum_offset: int | None  # where the checksum sits in the header (None: no checksum)

    def with_checksum(self, src: bytes, dst: bytes) -> bytes:
        body = self.header + self.payload
        if self.checksum_offset is None:
            return body
        if len(src) == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, self.proto, len(body))
        else:
            pseudo = src + dst + struct.pack("!IxxxB", len(body), self.proto)
        value = internet_checksum(pseudo + body)
        if self.proto == 17 and value == 0:
            value = 0xFFFF  # UDP sends a computed zero as all ones
        off = self.checksum_offset
        return body[:off] + struct.pack("!H", value) + body[off + 2 :]


def tcp_timestamp_option(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, Timestamps (kind 8, length 10): 12 bytes."""
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


def tcp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = PSH | ACK,
    window: int = 64240,
    options: bytes = b"",
    urgent: int = 0,
) -> Segment:
    """A TCP segment; `options` is padded with zero bytes (EOL) to a multiple of 4."""
    options = options + b"\x00" * (-len(options) % 4)
    data_offset = (20 + len(options)) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        sport,
        dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        data_offset << 4,
        flags,
        window,
        0,
        urgent,
    )
    return Segment(6, header + options, payload, 16)


def udp(sport: int, dport: int, payload: bytes = b"") -> Segment:
    return Segment(17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0), payload, 6)


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, v6: bool = False) -> Segment:
    kind = 128 if v6 else 8
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return Segment(58, header, payload, 2)
    value = internet_checksum(header + payload)
    return Segment(1, header[:2] + struct.pack("!H", value) + header[4:], payload, None)


def raw_segment(proto: int, data: bytes) -> Segment:
    """Any other IP protocol: the bytes as given, no transport header parsed by netmamba."""
    return Segment(proto, b"", data, None)


# ---------------------------------------------------------------------------------------------
# IP layer


def ipv4(
    src: str,
    dst: str,
    segment: Segment | bytes,
    *,
    proto: int | None = None,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    options: bytes = b"",
    total_length: int | None = None,
) -> bytes:
    """An IPv4 packet with a correct header checksum. `segment` may be raw bytes (then `proto`
    must be given), e.g. a fragment's piece of a segment. `fragment_offset` is in bytes (a
    multiple of 8)."""
    sa, da = addr(src), addr(dst)
    if isinstance(segment, Segment):
        body = segment.with_checksum(sa, da)
        proto = segment.proto
    else:
        body = segment
        if proto is None:
            raise ValueError("proto is needed when the segment is raw bytes")
    options = options + b"\x00" * (-len(options) % 4)
    ihl = (20 + len(options)) // 4
    flags_frag = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0)
    flags_frag |= fragment_offset // 8
    length = ihl * 4 + len(body) if total_length is None else total_length
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, tos, length, ident, flags_frag, ttl, proto, 0, sa, da
    )
    header += options
    checksum = internet_checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    return header + body


def ipv6_extension(next_header: int, body: bytes) -> bytes:
    """A generic extension header (hop-by-hop, routing, destination options): next header,
    length in 8-byte units after the first 8, body padded to make the total a multiple of 8."""
    body = body + b"\x00" * (-(len(body) + 2) % 8)
    return struct.pack("!BB", next_header, (len(body) + 2) // 8 - 1) + body


def ipv6(
    src: str,
    dst: str,
    segment: Segment | bytes,
    *,
    proto: int | None = None,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    extensions: Sequence[int] = (),
    fragment: tuple[int, int, bool] | None = None,
) -> bytes:
    """An IPv6 packet. `extensions` lists extension header types (0 hop-by-hop, 43 routing,
    60 destination options), each 8 bytes of padding; `fragment=(identification,
    offset_bytes, more)` adds a fragment header last."""
    sa, da = addr(src), addr(dst)
    if isinstance(segment, Segment):
        body = segment.with_checksum(sa, da)
        proto = segment.proto
    else:
        body = segment
        if proto is None:
            raise ValueError("proto is needed when the segment is raw bytes")
    chain = list(extensions) + ([44] if fragment else [])
    ext = b""
    for i, kind in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else proto
        if kind == 44:
            assert fragment is not None
            ident, offset, more = fragment
            ext += struct.pack("!BBHI", nxt, 0, (offset // 8) << 3 | int(more), ident)
        else:
            ext += ipv6_extension(nxt, b"\x01\x04\x00\x00\x00\x00")  # PadN option
    first = chain[0] if chain else proto
    word = (6 << 28) | (traffic_class << 20) | flow_label
    header = struct.pack("!IHBB16s16s", word, len(ext) + len(body), first, hop_limit, sa, da)
    return header + ext + body


def ip(src: str, dst: str, segment: Segment | bytes, **kw) -> bytes:
    """IPv4 or IPv6 by the form of the addresses."""
    if ipaddress.ip_address(src).version == 4:
        return ipv4(src, dst, segment, **kw)
    return ipv6(src, dst, segment, **kw)


# ---------------------------------------------------------------------------------------------
# link layers


def _ethertype(ip_packet: bytes) -> int:
    return 0x86DD if ip_packet and ip_packet[0] >> 4 == 6 else 0x0800


def ethernet(
    payload: bytes,
    *,
    src_mac: bytes = CLIENT_MAC,
    dst_mac: bytes = SERVER_MAC,
    vlans: Sequence[int] = (),
    qinq: bool = False,
    ethertype: int | None = None,
    pad_to_60: bool = True,
) -> bytes:
    """An Ethernet frame; `vlans` adds 802.1Q tags (outermost first; with `qinq` the outer tag
    is 802.1ad 0x88a8). Short frames are padded to 60 bytes like real NICs do, which puts
    trailer bytes after the IP packet."""
    kind = _ethertype(payload) if ethertype is None else ethertype
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if qinq and i == 0 and len(vlans) > 1 else 0x8100
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame = dst_mac + src_mac + tags + struct.pack("!H", kind) + payload
    if pad_to_60 and len(frame) < 60:
        frame += b"\x00" * (60 - len(frame))
    return frame


def linux_sll(payload: bytes, *, src_mac: bytes = CLIENT_MAC, packet_type: int = 0) -> bytes:
    """Linux cooked header v1 (16 bytes): packet type, ARPHRD_ETHER, address length 6, the
    sender's address padded to 8 bytes, protocol."""
    return (
        struct.pack("!HHH", packet_type, 1, 6)
        + src_mac
        + b"\x00\x00"
        + struct.pack("!H", _ethertype(payload))
        + payload
    )


def linux_sll2(payload: bytes, *, src_mac: bytes = CLIENT_MAC, ifindex: int = 2) -> bytes:
    """Linux cooked header v2 (20 bytes): protocol, reserved, interface index, ARPHRD_ETHER,
    packet type, address length, address (8 bytes)."""
    return (
        struct.pack("!HHIHBB", _ethertype(payload), 0, ifindex, 1, 0, 6)
        + src_mac
        + b"\x00\x00"
        + payload
    )


def bsd_loopback(payload: bytes, *, big_endian: bool = False, v6_family: int = 30) -> bytes:
    """DLT_NULL: address family (2 = IPv4; 24, 28 or 30 = IPv6 on the BSDs) in host order."""
    family = 2 if _ethertype(payload) == 0x0800 else v6_family
    return struct.pack(">I" if big_endian else "<I", family) + payload


def link(linktype: int, ip_packet: bytes, **kw) -> bytes:
    """Wrap an IP packet in the link layer of `linktype`."""
    if linktype == LINKTYPE_ETHERNET:
        return ethernet(ip_packet, **kw)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return ip_packet
    if linktype == LINKTYPE_LINUX_SLL:
        return linux_sll(ip_packet, **kw)
    if linktype == LINKTYPE_LINUX_SLL2:
        return linux_sll2(ip_packet, **kw)
    if linktype == LINKTYPE_NULL:
        return bsd_loopback(ip_packet, **kw)
    if linktype == LINKTYPE_LOOP:
        return bsd_loopback(ip_packet, big_endian=True, **kw)
    raise ValueError(f"pcapgen cannot build link type {linktype}")


# ---------------------------------------------------------------------------------------------
# conversations


@dataclass(frozen=True)
class Sent:
    """One packet of a conversation: capture time, IP bytes, and whether the client sent it."""

    ts_ns: int
    ip: bytes
    from_client: bool


def tcp_session(
    client: tuple[str, int],
    server: tuple[str, int],
    payloads: Sequence[tuple[str, bytes]],
    *,
    start_ns: int = 1_600_000_000_000_000_000,
    gap_ns: int = 1_000_000,
    handshake: bool = True,
    client_isn: int = 1000,
    server_isn: int = 5000,
    options: bytes = b"",
    **ip_kw,
) -> list[Sent]:
    """A TCP conversation: optional 3-way handshake, then one segment per payload.

    `payloads` is a list of ("client" | "server", bytes). Sequence and acknowledgement numbers
    advance as a real stack would; packet i is captured at start_ns + i * gap_ns.
    """
    (caddr, cport), (saddr, sport) = client, server
    seq = {True: client_isn, False: server_isn}
    out: list[tuple[bool, Segment]] = []
    if handshake:
        out.append((True, tcp(cport, sport, seq=seq[True], flags=SYN, options=options)))
        seq[True] += 1
        out.append(
            (
                False,
                tcp(sport, cport, seq=seq[False], ack=seq[True], flags=SYN | ACK, options=options),
            )
        )
        seq[False] += 1
        out.append(
            (True, tcp(cport, sport, seq=seq[True], ack=seq[False], flags=ACK, options=options))
        )
    for side, data in payloads:
        if side not in ("client", "server"):
            raise ValueError(f"payload side must be 'client' or 'server', not {side!r}")
        c = side == "client"
        ports = (cport, sport) if c else (sport, cport)
        out.append(
            (c, tcp(*ports, data, seq=seq[c], ack=seq[not c], flags=PSH | ACK, options=options))
        )
        seq[c] += len(data)
    return [
        Sent(
            start_ns + i * gap_ns,
            ip(caddr, saddr, seg, **ip_kw) if c else ip(saddr, caddr, seg, **ip_kw),
            c,
        )
        for i, (c, seg) in enumerate(out)
    ]


def udp_flow(
    client: tuple[str, int],
    server: tuple[str, int],
    payloads: Sequence[tuple[str, bytes]],
    *,
    start_ns: int = 1_600_000_000_000_000_000,
    gap_ns: int = 1_000_000,
    **ip_kw,
) -> list[Sent]:
    """UDP datagrams between two endpoints, one per payload ("client" | "server", bytes)."""
    (caddr, cport), (saddr, sport) = client, server
    out = []
    for i, (side, data) in enumerate(payloads):
        c = side == "client"
        pkt = (
            ip(caddr, saddr, udp(cport, sport, data), **ip_kw)
            if c
            else ip(saddr, caddr, udp(sport, cport, data), **ip_kw)
        )
        out.append(Sent(start_ns + i * gap_ns, pkt, c))
    return out


def frames(sent: Iterable[Sent], linktype: int = LINKTYPE_ETHERNET, **link_kw) -> list:
    """(ts_ns, frame) pairs; on Ethernet and Linux cooked links the client and server get the
    MAC addresses CLIENT_MAC and SERVER_MAC."""
    out = []
    for s in sent:
        kw = dict(link_kw)
        if linktype == LINKTYPE_ETHERNET and "src_mac" not in link_kw:
            kw["src_mac"], kw["dst_mac"] = (
                (CLIENT_MAC, SERVER_MAC) if s.from_client else (SERVER_MAC, CLIENT_MAC)
            )
        if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2) and "src_mac" not in link_kw:
            kw["src_mac"] = CLIENT_MAC if s.from_client else SERVER_MAC
        out.append((s.ts_ns, link(linktype, s.ip, **kw)))
    return out


def merge(*conversations: Sequence) -> list:
    """Interleave several lists of (ts_ns, ...) items by time (stable)."""
    items = [x for conv in conversations for x in conv]
    return sorted(items, key=lambda x: x[0] if isinstance(x, tuple) else x.ts_ns)


# ---------------------------------------------------------------------------------------------
# writers


def _open(path: Path, gzip: bool):
    return gzip_module.open(path, "wb") if gzip else open(path, "wb")


def pcap_bytes(
    frames_: Iterable[tuple[int, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = 65535,
    wire_lengths: Sequence[int] | None = None,
) -> bytes:
    """The bytes of a classic pcap file. Frames longer than `snaplen` are cut (their original
    length stays in the record header), as a capture with a snap length does."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, (ts_ns, frame) in enumerate(frames_):
        sec, rest = divmod(ts_ns, 1_000_000_000)
        frac = rest if nanosecond else rest // 1000
        wire = len(frame) if wire_lengths is None else wire_lengths[i]
        data = frame[:snaplen]
        out.append(struct.pack(e + "IIII", sec, frac, len(data), wire) + data)
    return b"".join(out)


def write_pcap(
    path: str | Path,
    frames_: Iterable[tuple[int, bytes]],
    linktype: int = LINKTYPE_ETHERNET,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = 65535,
    gzip: bool = False,
) -> Path:
    """Write a classic pcap file (gzip-compressed when `gzip`)."""
    path = Path(path)
    data = pcap_bytes(
        frames_, linktype, nanosecond=nanosecond, big_endian=big_endian, snaplen=snaplen
    )
    with _open(path, gzip) as f:
        f.write(data)
    return path


@dataclass(frozen=True)
class Interface:
    """A pcapng interface: link type and timestamp resolution (if_tsresol byte: 6 = us,
    9 = ns, 0x80 | n = 2^-n seconds; None writes no option, which means microseconds)."""

    linktype: int = LINKTYPE_ETHERNET
    tsresol: int | None = None
    snaplen: int = 0
    tsoffset: int = 0  # if_tsoffset: seconds added to every timestamp


def _ticks(ts_ns: int, tsresol: int | None) -> int:
    if tsresol is None:
        tsresol = 6
    if tsresol & 0x80:
        return (ts_ns << (tsresol & 0x7F)) // 1_000_000_000
    return ts_ns * 10**tsresol // 1_000_000_000


def _block(e: str, kind: int, body: bytes) -> bytes:
    body = body + b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", kind, n) + body + struct.pack(e + "I", n)


def _option(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def pcapng_bytes(
    packets: Iterable[tuple[int, int, bytes]],
    interfaces: Sequence[Interface] = (Interface(),),
    *,
    big_endian: bool = False,
    simple: Iterable[int] = (),
    extra_blocks: bool = True,
) -> bytes:
    """The bytes of a pcapng file. `packets` are (interface index, ts_ns, frame); indices in
    `simple` are written as simple packet blocks (interface 0, no timestamp). With
    `extra_blocks` a name-resolution block and an unknown block type are included, which a
    reader must skip."""
    e = ">" if big_endian else "<"
    simple = set(simple)
    shb = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(e, 4, b"pcapgen") + b"\0" * 4
    out = [_block(e, 0x0A0D0D0A, shb)]
    for itf in interfaces:
        opts = b""
        if itf.tsresol is not None:
            opts += _option(e, 9, bytes([itf.tsresol]))
        if itf.tsoffset:
            opts += _option(e, 14, struct.pack(e + "q", itf.tsoffset))
        if opts:
            opts += b"\x00" * 4  # opt_endofopt
        out.append(_block(e, 1, struct.pack(e + "HHI", itf.linktype, 0, itf.snaplen) + opts))
    if extra_blocks:
        out.append(_block(e, 4, struct.pack(e + "HH", 0, 0)))  # empty name resolution block
        out.append(_block(e, 0x0BAD, b"unknown block type, to be skipped"))
    for i, (iface, ts_ns, frame) in enumerate(packets):
        if i in simple:
            out.append(_block(e, 3, struct.pack(e + "I", len(frame)) + frame))
            continue
        itf = interfaces[iface]
        ticks = _ticks(ts_ns - itf.tsoffset * 1_000_000_000, itf.tsresol)
        body = struct.pack(
            e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
        )
        out.append(_block(e, 6, body + frame))
    return b"".join(out)


def write_pcapng(
    path: str | Path,
    packets: Iterable[tuple[int, int, bytes]],
    interfaces: Sequence[Interface] = (Interface(),),
    *,
    big_endian: bool = False,
    simple: Iterable[int] = (),
    gzip: bool = False,
) -> Path:
    """Write a pcapng file; see `pcapng_bytes`."""
    path = Path(path)
    data = pcapng_bytes(packets, interfaces, big_endian=big_endian, simple=simple)
    with _open(path, gzip) as f:
        f.write(data)
    return path


def tls_client_hello(server_name: str, *, session_id: bytes = b"\x11" * 32) -> bytes:
    """A TLS 1.2 record holding a ClientHello with one cipher suite and a server_name
    extension (plus a supported_groups extension before it, so the SNI is not first)."""
    name = server_name.encode()
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    groups = struct.pack("!HH", 2, 0x001D)
    extensions = (
        struct.pack("!HH", 10, len(groups)) + groups + struct.pack("!HH", 0, len(sni)) + sni
    )
    body = (
        b"\x03\x03"
        + bytes(range(32))  # random
        + bytes([len(session_id)])
        + session_id
        + struct.pack("!HH", 2, 0x1301)  # cipher suites
        + b"\x01\x00"  # compression methods: null
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake
