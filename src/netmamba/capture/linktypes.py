"""pcap link types (LINKTYPE_* values) that netmamba reads, and how their headers are laid out.

Every other link type is counted as `unknown_link_type` and skipped, never guessed.
"""

from __future__ import annotations

NULL = 0  # BSD loopback: 4-byte address family in the byte order of the capturing host
ETHERNET = 1  # Ethernet II / 802.3 with LLC-SNAP; 802.1Q, 802.1ad (QinQ), MPLS, PPPoE inside
PPP = 9  # PPP, optionally with HDLC address/control bytes FF 03
RAW_OPENBSD = 12  # raw IP (DLT_RAW's value on some systems)
RAW_BSDOS = 14  # raw IP (ditto)
PPP_HDLC = 50
RAW = 101  # raw IPv4 / IPv6, no link header
C_HDLC = 104  # Cisco HDLC: address, control, ethertype
LOOP = 108  # OpenBSD loopback: address family in network byte order
LINUX_SLL = 113  # Linux cooked capture v1 (16-byte header)
IPV4 = 228
IPV6 = 229
LINUX_SLL2 = 276  # Linux cooked capture v2 (20-byte header)

SUPPORTED = {
    NULL: "BSD loopback",
    ETHERNET: "Ethernet",
    PPP: "PPP",
    RAW_OPENBSD: "raw IP",
    RAW_BSDOS: "raw IP",
    PPP_HDLC: "PPP in HDLC framing",
    RAW: "raw IP",
    C_HDLC: "Cisco HDLC",
    LOOP: "OpenBSD loopback",
    LINUX_SLL: "Linux cooked (SLL)",
    IPV4: "raw IPv4",
    IPV6: "raw IPv6",
    LINUX_SLL2: "Linux cooked v2 (SLL2)",
}


def describe(linktype: int) -> str:
    name = SUPPORTED.get(linktype)
    return f"{linktype} ({name})" if name else f"{linktype} (not supported)"
