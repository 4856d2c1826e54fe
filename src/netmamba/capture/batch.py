"""A batch of captured packets: one buffer of frame bytes plus one parsed record per packet.

Readers yield `PacketBatch`es (a few thousand packets each) rather than one object per packet,
so the hot path has no per-field Python objects: the header offsets of all packets of a batch
are found by one call to the native parser (`csrc/packets.c`, `nm_parse`) or, without it, by
the reference parser `netmamba.capture.parse` (identical results). The flow meter then reads
the columns it needs as Python lists.

`PacketBatch.from_frames(frames)` builds a batch from frames that come from elsewhere (the
live capture, tests): any iterable of (ts_ns, data, linktype).
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from netmamba import _native
from netmamba.capture.parse import FIELDS, KEY_SIZE, STATUS_NAMES, parse_frame

# One record per packet; the layout matches `nm_packet` in csrc/packets.c (aligned C struct).
PACKET_DTYPE = np.dtype(
    [
        ("ts_ns", "<i8"),  # capture time, integer nanoseconds since the epoch
        ("off", "<i8"),  # where the frame starts in the batch buffer
        ("caplen", "<i4"),  # captured bytes of the frame
        ("wirelen", "<i4"),  # length of the frame on the wire
        ("linktype", "<i4"),
        ("ip_off", "<i4"),  # the parsed fields (see netmamba.capture.parse)
        ("ip_len", "<i4"),
        ("l4_off", "<i4"),
        ("payload_off", "<i4"),
        ("payload_end", "<i4"),
        ("smac_off", "<i4"),
        ("dmac_off", "<i4"),
        ("frag_id", "<u4"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("status", "u1"),
        ("version", "u1"),
        ("proto", "u1"),
        ("tcp_flags", "u1"),
        ("frag", "u1"),
        ("rev", "u1"),
        ("key", "u1", (KEY_SIZE,)),
    ],
    align=True,
)


def _load_native() -> ctypes.CDLL | None:
    lib = _native.load("packets")
    if lib is None:
        return None
    lib.nm_packet_size.restype = ctypes.c_int64
    if lib.nm_packet_size() != PACKET_DTYPE.itemsize:  # a stale build: never trust it
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.nm_walk_pcap.restype = i64
    lib.nm_walk_pcap.argtypes = [p, i64, i32, i32, i32, i64, p, i64, p, p]
    lib.nm_parse.restype = None
    lib.nm_parse.argtypes = [p, i64, p, i64]
    lib.nm_debias.restype = None
    lib.nm_debias.argtypes = [p, i64, i32, i32, i32, p, p, p, p]
    lib.nm_meter_new.restype = p
    lib.nm_meter_new.argtypes = [i32, i64, i64, i64]
    lib.nm_meter_free.restype = None
    lib.nm_meter_free.argtypes = [p]
    lib.nm_meter_open.restype = i64
    lib.nm_meter_open.argtypes = [p]
    lib.nm_meter_add.restype = i64
    lib.nm_meter_add.argtypes = [p, p, i64, p, p, p, p, p, p, p, p, p, p, i64]
    lib.nm_meter_advance.restype = i64
    lib.nm_meter_advance.argtypes = [p, i64, i32, p, p, p, p, p, p, p, i64]
    lib.nm_meter_counters.restype = None
    lib.nm_meter_counters.argtypes = [p, i32, p]
    return lib


_LIB: ctypes.CDLL | bool | None = False


def native() -> ctypes.CDLL | None:
    """The native packet kernels, or None (NETMAMBA_NO_NATIVE=packets, or not built)."""
    global _LIB
    if _LIB is False:
        _LIB = _load_native()
    return _LIB  # type: ignore[return-value]


def reset_native() -> None:
    """Forget the loaded kernels (tests switch between native and Python)."""
    global _LIB
    _LIB = False
    _native.load.cache_clear()


def buffer_address(buf: bytes) -> int:
    """Address of a bytes object's data, for a read-only native call (no copy)."""
    return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0


def parse_records(buf: bytes, packets: np.ndarray) -> None:
    """Fill the parsed fields of `packets` (off, caplen, linktype set) from the frames in buf."""
    if len(packets) == 0:
        return
    lib = native()
    if lib is not None:
        lib.nm_parse(buffer_address(buf), len(buf), packets.ctypes.data, len(packets))
        return
    parse_records_python(buf, packets)


def parse_records_python(buf: bytes, packets: np.ndarray) -> None:
    """The reference path of `parse_records` (plain Python, one frame at a time)."""
    n = len(packets)
    rows = [
        parse_frame(buf[o : o + c] if o >= 0 and c > 0 else b"", t)
        for o, c, t in zip(
            packets["off"].tolist(),
            packets["caplen"].tolist(),
            packets["linktype"].tolist(),
            strict=True,
        )
    ]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(FIELDS)
    for name, column in zip(FIELDS, columns, strict=True):
        if name == "key":
            packets["key"] = np.frombuffer(b"".join(column), np.uint8).reshape(n, KEY_SIZE)
        else:
            packets[name] = column


@dataclass(frozen=True)
class Packet:
    """One parsed packet, for tests and scripts (the pipeline itself works on batches)."""

    ts_ns: int
    linktype: int
    frame: bytes
    wire_len: int
    status: str  # "ok" or the reason it was skipped (netmamba.capture.parse.STATUS_NAMES)
    version: int
    proto: int
    src: str | None
    dst: str | None
    sport: int
    dport: int
    ip_offset: int
    ip_len: int
    l4_offset: int
    payload_offset: int
    payload_end: int
    tcp_flags: int
    frag: int
    src_mac: bytes | None
    dst_mac: bytes | None

    @property
    def ip(self) -> bytes:
        """The captured IP packet (without Ethernet trailer padding)."""
        return self.frame[self.ip_offset : self.payload_end]

    @property
    def header(self) -> bytes:
        """IP header (with options / extension headers) and transport header."""
        return self.frame[self.ip_offset : self.payload_offset]

    @property
    def payload(self) -> bytes:
        return self.frame[self.payload_offset : self.payload_end]


class PacketBatch:
    """Frames in one buffer (`buf`) with one `PACKET_DTYPE` record each (`packets`)."""

    __slots__ = ("buf", "packets")

    def __init__(self, buf: bytes, packets: np.ndarray) -> None:
        self.buf = buf
        self.packets = packets

    def __len__(self) -> int:
        return len(self.packets)

    @classmethod
    def from_frames(cls, frames: Iterable[tuple[int, bytes, int]]) -> PacketBatch:
        """Parse frames given as (ts_ns, frame bytes, link type), e.g. from a live capture."""
        frames = list(frames)
        packets = np.zeros(len(frames), PACKET_DTYPE)
        lengths = [len(f[1]) for f in frames]
        offsets = np.cumsum([0, *lengths[:-1]]) if frames else []
        packets["ts_ns"] = [f[0] for f in frames]
        packets["off"] = offsets
        packets["caplen"] = lengths
        packets["wirelen"] = lengths
        packets["linktype"] = [f[2] for f in frames]
        buf = b"".join(f[1] for f in frames)
        parse_records(buf, packets)
        return cls(buf, packets)

    def status_counts(self) -> dict[str, int]:
        """Skipped packets by reason (status != ok)."""
        counts = np.bincount(self.packets["status"], minlength=len(STATUS_NAMES))
        return {STATUS_NAMES[i]: int(c) for i, c in enumerate(counts) if i and c}

    def packet(self, i: int) -> Packet:
        p = self.packets[i]
        off, caplen = int(p["off"]), int(p["caplen"])
        frame = self.buf[off : off + caplen]
        ok = p["status"] == 0
        family = socket.AF_INET if p["version"] == 4 else socket.AF_INET6
        key = bytes(p["key"])
        a, b = (key[8:24], key[24:40]) if not p["rev"] else (key[24:40], key[8:24])
        alen = 4 if p["version"] == 4 else 16
        smac, dmac = int(p["smac_off"]), int(p["dmac_off"])
        return Packet(
            ts_ns=int(p["ts_ns"]),
            linktype=int(p["linktype"]),
            frame=frame,
            wire_len=int(p["wirelen"]),
            status=STATUS_NAMES[p["status"]],
            version=int(p["version"]),
            proto=int(p["proto"]),
            src=socket.inet_ntop(family, a[:alen]) if ok else None,
            dst=socket.inet_ntop(family, b[:alen]) if ok else None,
            sport=int(p["sport"]),
            dport=int(p["dport"]),
            ip_offset=int(p["ip_off"]),
            ip_len=int(p["ip_len"]),
            l4_offset=int(p["l4_off"]),
            payload_offset=int(p["payload_off"]),
            payload_end=int(p["payload_end"]),
            tcp_flags=int(p["tcp_flags"]),
            frag=int(p["frag"]),
            src_mac=frame[smac : smac + 6] if smac >= 0 and smac + 6 <= caplen else None,
            dst_mac=frame[dmac : dmac + 6] if dmac >= 0 and dmac + 6 <= caplen else None,
        )

    def __iter__(self) -> Iterator[Packet]:
        for i in range(len(self)):
            yield self.packet(i)
