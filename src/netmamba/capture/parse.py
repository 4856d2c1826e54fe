"""Thin packet parsing: where the IP header, the transport header and the payload start.

This is the reference implementation in plain Python. The native kernel (`csrc/packets.c`,
`nm_parse`) does the same per packet of a batch and must give identical results; the tests
compare them on generated and random frames. Parsing reads only offsets and lengths from the
headers (never searches the bytes) and never raises: a frame that cannot be used gets a status
code that says why (`STATUS_NAMES`), which the reader counts.

The result of one frame (`parse_frame`) is a tuple in the order of `FIELDS`:

    status       0 = usable IP packet, else a skip reason (STATUS_NAMES)
    ip_off       offset of the IP header in the frame
    ip_len       IP packet length from its header (IPv4 total length; IPv6 40 + payload
                 length); the captured length when the header says 0 (segmentation offload)
    l4_off       offset of the transport header (after IPv4 options / IPv6 extension headers)
    payload_off  offset of the transport payload (TCP data offset, UDP/ICMP 8, SCTP 12,
                 other protocols and non-first fragments: = l4_off)
    payload_end  end of the captured payload: min(captured length, IP packet end), so Ethernet
                 trailer padding is never read as payload
    smac_off     offset of the source MAC address (-1: none on this link type)
    dmac_off     offset of the destination MAC address (-1: none)
    frag_id      IPv4 identification / IPv6 fragment identification of a fragment, else 0
    sport/dport  transport ports (TCP, UDP, UDP-Lite, SCTP; else 0)
    version      4 or 6
    proto        transport protocol (after IPv6 extension headers)
    tcp_flags    TCP flags byte (0 for other protocols)
    frag         0 not a fragment, 1 first fragment, 2 later fragment (no transport header)
    rev, key     the flow key (see `flow_key`) and whether the packet goes from the larger
                 endpoint to the smaller one
"""

from __future__ import annotations

from netmamba.capture import linktypes as lt

STATUS_NAMES = (
    "ok",
    "truncated_link",  # frame shorter than its link-layer header
    "not_ip",  # ARP, LLDP, STP, ... (SPEC: non-IP packets are dropped)
    "unknown_link_type",
    "truncated_ip",  # IP header (or IPv6 extension header chain) cut by the snap length
    "bad_ip",  # IP version not 4/6 or not the one the link layer announced, bad lengths
    "truncated_transport",  # TCP/UDP/SCTP/ICMP header cut: ports unknown
    "bad_transport",  # TCP data offset below 5
)
OK, TRUNCATED_LINK, NOT_IP, UNKNOWN_LINK, TRUNCATED_IP, BAD_IP, TRUNCATED_L4, BAD_L4 = range(8)

FIELDS = (
    "status",
    "ip_off",
    "ip_len",
    "l4_off",
    "payload_off",
    "payload_end",
    "smac_off",
    "dmac_off",
    "frag_id",
    "sport",
    "dport",
    "version",
    "proto",
    "tcp_flags",
    "frag",
    "rev",
    "key",
)

KEY_SIZE = 40
_ZERO12 = bytes(12)
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_IPV6_EXTENSIONS = (0, 43, 60, 135, 139, 140)  # generic: length in 8-byte units after 8
_MAX_TAGS = 8  # VLAN tags / MPLS labels / IPv6 extension headers walked at most


def flow_key(
    version: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int
) -> tuple[int, bytes]:
    """(rev, key): the 40-byte flow key of a packet and its direction bit.

    Layout: [rev, version, proto, 0, port_a (2), port_b (2), addr_a (16), addr_b (16)], where
    endpoint a is the smaller of (address padded to 16 bytes, port) of source and destination
    and rev = 1 when the packet goes from b to a. key[1:] is the same for both directions (the
    session key); the whole key differs between directions (the uni-directional flow key).
    """
    s = src + _ZERO12 if len(src) == 4 else src
    d = dst + _ZERO12 if len(dst) == 4 else dst
    sp, dp = sport.to_bytes(2, "big"), dport.to_bytes(2, "big")
    if s + sp <= d + dp:
        return 0, bytes((0, version, proto, 0)) + sp + dp + s + d
    return 1, bytes((1, version, proto, 0)) + dp + sp + d + s


def _link(f: bytes, n: int, linktype: int) -> tuple[int, int, int, int, int]:
    """(status, ip_off, expected IP version or 0, smac_off, dmac_off) for one frame."""
    if linktype == lt.ETHERNET:
        if n < 14:
            return TRUNCATED_LINK, 0, 0, -1, -1
        return _ethertype(f, n, (f[12] << 8) | f[13], 14, 6, 0)
    if linktype in (lt.RAW, lt.RAW_OPENBSD, lt.RAW_BSDOS):
        return OK, 0, 0, -1, -1
    if linktype == lt.IPV4:
        return OK, 0, 4, -1, -1
    if linktype == lt.IPV6:
        return OK, 0, 6, -1, -1
    if linktype == lt.LINUX_SLL:
        if n < 16:
            return TRUNCATED_LINK, 0, 0, -1, -1
        halen = (f[4] << 8) | f[5]
        return _ethertype(f, n, (f[14] << 8) | f[15], 16, 6 if halen == 6 else -1, -1)
    if linktype == lt.LINUX_SLL2:
        if n < 20:
            return TRUNCATED_LINK, 0, 0, -1, -1
        return _ethertype(f, n, (f[0] << 8) | f[1], 20, 12 if f[11] == 6 else -1, -1)
    if linktype in (lt.NULL, lt.LOOP):
        if n < 4:
            return TRUNCATED_LINK, 0, 0, -1, -1
        if linktype == lt.LOOP:
            family = int.from_bytes(f[0:4], "big")
        else:
            family = int.from_bytes(f[0:4], "little")
            if family > 0xFFFF:  # written by a big-endian host
                family = int.from_bytes(f[0:4], "big")
        if family == 2:
            return OK, 4, 4, -1, -1
        if family in (10, 24, 28, 30):
            return OK, 4, 6, -1, -1
        return NOT_IP, 0, 0, -1, -1
    if linktype in (lt.PPP, lt.PPP_HDLC):
        off = 2 if n >= 2 and f[0] == 0xFF and f[1] == 0x03 else 0
        if n < off + 2:
            return TRUNCATED_LINK, 0, 0, -1, -1
        return _ppp(((f[off] << 8) | f[off + 1]), off + 2)
    if linktype == lt.C_HDLC:
        if n < 4:
            return TRUNCATED_LINK, 0, 0, -1, -1
        return _ethertype(f, n, (f[2] << 8) | f[3], 4, -1, -1)
    return UNKNOWN_LINK, 0, 0, -1, -1


def _ppp(protocol: int, off: int) -> tuple[int, int, int, int, int]:
    if protocol == 0x0021:
        return OK, off, 4, -1, -1
    if protocol == 0x0057:
        return OK, off, 6, -1, -1
    return NOT_IP, 0, 0, -1, -1


def _ethertype(
    f: bytes, n: int, et: int, off: int, smac: int, dmac: int
) -> tuple[int, int, int, int, int]:
    """Follow VLAN tags, LLC/SNAP, MPLS and PPPoE from an ethertype at `off` to the IP header."""
    tags = 0
    while et in _VLAN_TPIDS:
        if tags == _MAX_TAGS:
            return NOT_IP, 0, 0, smac, dmac
        if n < off + 4:
            return TRUNCATED_LINK, 0, 0, smac, dmac
        et = (f[off + 2] << 8) | f[off + 3]
        off += 4
        tags += 1
    if et <= 1500:  # 802.3 length field: only LLC/SNAP carries IP
        if n < off + 8:
            return TRUNCATED_LINK, 0, 0, smac, dmac
        if f[off] != 0xAA or f[off + 1] != 0xAA or f[off + 2] != 0x03:
            return NOT_IP, 0, 0, smac, dmac
        et = (f[off + 6] << 8) | f[off + 7]
        off += 8
    if et == 0x0800:
        return OK, off, 4, smac, dmac
    if et == 0x86DD:
        return OK, off, 6, smac, dmac
    if et in (0x8847, 0x8848):  # MPLS: labels until bottom of stack, then IP by its version
        for _ in range(_MAX_TAGS):
            if n < off + 4:
                return TRUNCATED_LINK, 0, 0, smac, dmac
            bottom = f[off + 2] & 1
            off += 4
            if bottom:
                if n <= off:
                    return TRUNCATED_LINK, 0, 0, smac, dmac
                version = f[off] >> 4
                if version in (4, 6):
                    return OK, off, version, smac, dmac
                return NOT_IP, 0, 0, smac, dmac
        return NOT_IP, 0, 0, smac, dmac
    if et == 0x8864:  # PPPoE session: 6-byte header, then a PPP protocol
        if n < off + 8:
            return TRUNCATED_LINK, 0, 0, smac, dmac
        status, ip_off, version, _, _ = _ppp((f[off + 6] << 8) | f[off + 7], off + 8)
        return status, ip_off, version, smac, dmac
    return NOT_IP, 0, 0, smac, dmac


def parse_frame(frame: bytes, linktype: int) -> tuple:
    """Parse one captured frame; a tuple in the order of `FIELDS` (see the module docstring)."""
    f = frame
    n = len(f)
    status, off, want, smac, dmac = _link(f, n, linktype)
    if status != OK:
        return _fail(status, smac, dmac)
    if n <= off:
        return _fail(TRUNCATED_IP, smac, dmac)
    version = f[off] >> 4
    if version not in (4, 6) or (want and version != want):
        return _fail(BAD_IP, smac, dmac)
    frag = 0
    frag_id = 0
    if version == 4:
        if n < off + 20:
            return _fail(TRUNCATED_IP, smac, dmac)
        ihl = (f[off] & 15) * 4
        if ihl < 20:
            return _fail(BAD_IP, smac, dmac)
        if n < off + ihl:
            return _fail(TRUNCATED_IP, smac, dmac)
        ip_len = (f[off + 2] << 8) | f[off + 3]
        if ip_len == 0:
            ip_len = n - off
        elif ip_len < ihl:
            return _fail(BAD_IP, smac, dmac)
        proto = f[off + 9]
        src = f[off + 12 : off + 16]
        dst = f[off + 16 : off + 20]
        flags_offset = (f[off + 6] << 8) | f[off + 7]
        if flags_offset & 0x3FFF:
            frag = 2 if flags_offset & 0x1FFF else 1
            frag_id = (f[off + 4] << 8) | f[off + 5]
        l4 = off + ihl
        end = min(n, off + ip_len)
    else:
        if n < off + 40:
            return _fail(TRUNCATED_IP, smac, dmac)
        ip_len = 40 + ((f[off + 4] << 8) | f[off + 5])
        proto = f[off + 6]
        if ip_len == 40 and proto == 0:
            ip_len = n - off  # payload length 0 with hop-by-hop options: a jumbogram
        src = f[off + 8 : off + 24]
        dst = f[off + 24 : off + 40]
        l4 = off + 40
        end = min(n, off + ip_len)
        for _ in range(_MAX_TAGS):
            if proto in _IPV6_EXTENSIONS:
                if end < l4 + 2:
                    return _fail(TRUNCATED_IP, smac, dmac)
                proto, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
            elif proto == 51:  # authentication header: length in 4-byte units after 8
                if end < l4 + 2:
                    return _fail(TRUNCATED_IP, smac, dmac)
                proto, l4 = f[l4], l4 + (f[l4 + 1] + 2) * 4
            elif proto == 44:  # fragment header
                if end < l4 + 8:
                    return _fail(TRUNCATED_IP, smac, dmac)
                offset_more = (f[l4 + 2] << 8) | f[l4 + 3]
                frag_id = int.from_bytes(f[l4 + 4 : l4 + 8], "big")
                proto, l4 = f[l4], l4 + 8
                if offset_more & 0xFFF8:
                    frag = 2
                    break  # what follows is the middle of a packet, not headers
                frag = 1 if offset_more & 1 else 0
                if not frag:
                    frag_id = 0  # atomic fragment: a whole packet
            else:
                break
            if l4 > end:
                return _fail(TRUNCATED_IP, smac, dmac)
    sport = dport = flags = 0
    payload = l4
    if frag != 2:
        if proto in (6, 17, 136, 132):  # TCP, UDP, UDP-Lite, SCTP: ports first
            need = 20 if proto == 6 else 12 if proto == 132 else 8
            if end < l4 + need:
                return _fail(TRUNCATED_L4, smac, dmac)
            sport = (f[l4] << 8) | f[l4 + 1]
            dport = (f[l4 + 2] << 8) | f[l4 + 3]
            if proto == 6:
                doff = (f[l4 + 12] >> 4) * 4
                if doff < 20:
                    return _fail(BAD_L4, smac, dmac)
                flags = f[l4 + 13]
                payload = min(l4 + doff, end)
            else:
                payload = l4 + need
        elif proto in (1, 58):  # ICMP, ICMPv6: type, code, checksum, 4 bytes
            if end < l4 + 8:
                return _fail(TRUNCATED_L4, smac, dmac)
            payload = l4 + 8
    rev, key = flow_key(version, proto, bytes(src), bytes(dst), sport, dport)
    return (
        OK,
        off,
        ip_len,
        l4,
        payload,
        max(end, payload),
        smac,
        dmac,
        frag_id,
        sport,
        dport,
        version,
        proto,
        flags,
        frag,
        rev,
        key,
    )


_EMPTY_KEY = bytes(KEY_SIZE)


def _fail(status: int, smac: int, dmac: int) -> tuple:
    return (status, -1, 0, -1, -1, -1, smac, dmac, 0, 0, 0, 0, 0, 0, 0, 0, _EMPTY_KEY)
