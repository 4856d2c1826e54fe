"""Streaming capture readers: pcap, pcapng and gzip-compressed either, in bounded memory.

`open_capture(path)` looks at the first bytes (never the file name) and returns a reader whose
`batches()` yields `PacketBatch`es of parsed packets, reading the file 1 MiB at a time, so a
capture of any size is read in a few MiB of memory. Timestamps are integer nanoseconds (exact
for nanosecond pcaps and any pcapng resolution).

Bad input never raises out of `batches()`: what cannot be read is skipped and counted in the
reader's `CaptureStats` (packets by skip reason, and `error`: why reading stopped early, e.g. a
truncated file or a corrupt record). `open_capture` raises `CaptureError` only for a file that
is not a capture at all (empty, unreadable, another format), with a message that says so.

Formats:
- pcap: both byte orders, micro- and nanosecond magic; the link type of the file header
  (its upper FCS bits ignored). Records are walked by the native kernel when built.
- pcapng: several sections (each with its own byte order) and interfaces (each with its own
  link type, `if_tsresol` and `if_tsoffset`); enhanced, simple and obsolete packet blocks;
  other blocks skipped. Simple packet blocks carry no timestamp: they get the timestamp of the
  previous packet (so they add no inter-arrival time).
"""

from __future__ import annotations

import ctypes
import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from netmamba.capture.batch import (
    PACKET_DTYPE,
    Packet,
    PacketBatch,
    buffer_address,
    native,
    parse_records,
)

CHUNK = 1 << 20  # bytes read at a time
MAX_BATCH = 8192  # packets per batch at most
MAX_RECORD = 16 << 20  # a record or block claiming more than this is corrupt
PCAP_MAX_SNAPLEN = 262144  # libpcap's limit: a larger captured length means corruption

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
_TS_MAX = (1 << 63) - 1
_STREAM_ERRORS = (OSError, EOFError, zlib.error)


class CaptureError(Exception):
    """A file cannot be read as a capture at all; the message names the file and the reason."""


class Frame(NamedTuple):
    """A raw captured frame, as the live capture also yields them."""

    ts_ns: int
    data: bytes
    linktype: int


@dataclass
class CaptureStats:
    """What reading one capture file gave: packets read, used and skipped (by reason)."""

    path: str
    format: str = ""
    link_types: list[int] = field(default_factory=list)
    packets: int = 0  # packet records read
    used: int = 0  # IP packets handed on to the flow meter
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> packets
    snapped: int = 0  # packets cut by the snap length (used, with their payload cut)
    error: str | None = None  # why reading stopped early, or why the file could not be read

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def add_batch(self, batch: PacketBatch) -> None:
        p = batch.packets
        self.packets += len(p)
        for reason, count in batch.status_counts().items():
            self.skip(reason, count)
        self.used += int(np.count_nonzero(p["status"] == 0))
        self.snapped += int(np.count_nonzero(p["caplen"] < p["wirelen"]))
        for t in np.unique(p["linktype"]).tolist():
            if t not in self.link_types:
                self.link_types.append(t)

    @property
    def usable(self) -> bool:
        return self.used > 0

    def describe(self) -> str:
        """One line for a person: counts, skips and the error, if any."""
        parts = [f"{self.packets} packets, {self.used} used"]
        if self.skipped:
            parts.append(
                "skipped " + ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
            )
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "link_types": self.link_types,
            "packets": self.packets,
            "used": self.used,
            "skipped": dict(sorted(self.skipped.items())),
            "snapped": self.snapped,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CaptureStats:
        return cls(**d)


def sniff(path: str | Path) -> str | None:
    """'pcap', 'pcapng', 'pcap.gz', 'pcapng.gz' by the first bytes, or None (not a capture)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == _GZIP_MAGIC:
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as g:
                    inner = g.read(4)
                kind = _kind(inner)
                return f"{kind}.gz" if kind else None
            return _kind(head)
    except _STREAM_ERRORS:
        return None


def _kind(head: bytes) -> str | None:
    if head in _PCAP_MAGIC:
        return "pcap"
    if head == _PCAPNG_MAGIC:
        return "pcapng"
    return None


def open_capture(source: str | Path | BinaryIO, name: str | None = None) -> CaptureReader:
    """A reader for a capture file path or an open binary stream (e.g. standard input)."""
    if isinstance(source, str | Path):
        path = str(source)
        try:
            if os.path.isdir(path):
                raise CaptureError(f"{path}: is a directory, not a capture file")
            raw: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by the reader)
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    else:
        raw = source
        path = name or getattr(source, "name", "<stream>")
    try:
        return CaptureReader(raw, str(path))
    except BaseException:
        raw.close()
        raise


class CaptureReader:
    """Reads one capture; `batches()` yields parsed packets, `stats` says what happened."""

    def __init__(self, raw: BinaryIO, path: str) -> None:
        self.path = path
        self._raw = raw
        self._stream: BinaryIO = raw
        self._prefix = b""
        self.stats = CaptureStats(path)
        head = self._read_head(raw, 4)
        compressed = head[:2] == _GZIP_MAGIC
        if compressed:
            self._stream = gzip.GzipFile(fileobj=_Prefixed(head, raw))  # type: ignore[assignment]
            try:
                head = self._read_head(self._stream, 4)
            except CaptureError as exc:
                raise CaptureError(f"{path}: gzip file: {exc}") from None
        if not head:
            raise CaptureError(f"{path}: empty file")
        kind = _kind(head)
        if kind is None:
            raise CaptureError(
                f"{path}: not a pcap or pcapng capture (it starts with bytes {head.hex(' ')}); "
                "give capture files written by tcpdump, Wireshark/dumpcap or similar"
            )
        self.kind = kind
        self.format = f"{kind}.gz" if compressed else kind
        self.stats.format = self.format
        self._prefix = head

    @staticmethod
    def _read_head(stream: BinaryIO, n: int) -> bytes:
        try:
            return stream.read(n)
        except _STREAM_ERRORS as exc:
            raise CaptureError(f"cannot read: {exc}") from None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._stream is not self._raw:
                self._stream.close()
        finally:
            self._raw.close()

    def _read(self, n: int) -> bytes:
        """Up to n bytes (b"" at the end); a read error ends the file and is recorded."""
        if self._prefix:
            out, self._prefix = self._prefix, b""
            return out
        try:
            read1 = getattr(self._stream, "read1", None)
            data = read1(n) if read1 is not None else self._stream.read(n)
            return data or b""
        except _STREAM_ERRORS as exc:
            self.stats.error = f"read error after {self.stats.packets} packets: {exc}"
            return b""

    def batches(self, max_packets: int = MAX_BATCH) -> Iterator[PacketBatch]:
        """Parsed packets in batches of at most `max_packets`; stats are updated as they go."""
        source = self._pcap_batches if self.kind == "pcap" else self._pcapng_batches
        for batch in source(max_packets):
            self.stats.add_batch(batch)
            yield batch

    def packets(self) -> Iterator[Packet]:
        for batch in self.batches():
            yield from batch

    def frames(self) -> Iterator[Frame]:
        for batch in self.batches():
            p = batch.packets
            for ts, off, caplen, linktype in zip(
                p["ts_ns"].tolist(),
                p["off"].tolist(),
                p["caplen"].tolist(),
                p["linktype"].tolist(),
                strict=True,
            ):
                yield Frame(ts, batch.buf[off : off + caplen], linktype)

    # -- pcap ---------------------------------------------------------------------------------

    def _pcap_batches(self, max_packets: int) -> Iterator[PacketBatch]:
        header = b""
        while len(header) < 24:
            more = self._read(24 - len(header))
            if not more:
                self.stats.error = "file ends inside the 24-byte pcap file header"
                return
            header += more
        order, nanosecond = _PCAP_MAGIC[header[:4]]
        snaplen, linktype = struct.unpack_from(order + "II", header, 16)
        linktype &= 0xFFFF  # the upper bits carry FCS information
        self.stats.link_types.append(linktype)
        if nanosecond:
            self.stats.format = self.format = self.format.replace("pcap", "pcap-ns", 1)
        limit = max(PCAP_MAX_SNAPLEN, min(snaplen, MAX_RECORD))
        walk = _walk_pcap_native if native() is not None else walk_pcap_python
        pending = b""
        while True:
            chunk = self._read(CHUNK)
            buf = pending + chunk if pending else chunk
            pos = 0
            while True:
                room = min(max_packets, (len(buf) - pos) // 16 + 1)
                packets = np.empty(room, PACKET_DTYPE)
                n, consumed, corrupt = walk(
                    buf, pos, order == ">", nanosecond, linktype, limit, packets
                )
                if n:
                    packets = packets[:n].copy()
                    parse_records(buf, packets)
                    yield PacketBatch(buf, packets)
                pos += consumed
                if corrupt:
                    (caplen,) = struct.unpack_from(order + "I", buf, pos + 8)
                    self.stats.error = (
                        f"corrupt packet record after {self.stats.packets} packets (captured "
                        f"length {caplen} > {limit}): stopped reading there"
                    )
                    return
                if n < room or pos >= len(buf):
                    break
            pending = buf[pos:]
            if not chunk:
                if pending:
                    self.stats.skip("truncated_record")
                    if not self.stats.error:
                        self.stats.error = (
                            f"file ends inside a packet record ({len(pending)} bytes left "
                            f"after {self.stats.packets} packets): truncated capture"
                        )
                return

    # -- pcapng -------------------------------------------------------------------------------

    def _pcapng_batches(self, max_packets: int) -> Iterator[PacketBatch]:
        walker = _PcapngWalker(self.stats)
        pending = b""
        while True:
            chunk = self._read(CHUNK)
            buf = pending + chunk if pending else chunk
            pos = 0
            while True:
                cols, pos, stop = walker.walk(buf, pos, max_packets)
                if cols[0]:
                    yield _batch_from_columns(buf, *cols)
                if stop or len(cols[0]) < max_packets:
                    break
            if walker.corrupt:
                return
            pending = buf[pos:]
            if not chunk:
                if pending:
                    self.stats.skip("truncated_record")
                    if not self.stats.error:
                        self.stats.error = (
                            f"file ends inside a block ({len(pending)} bytes left after "
                            f"{self.stats.packets} packets): truncated capture"
                        )
                return


class _Prefixed(io.RawIOBase):
    """A stream that first returns bytes already read from it (for gzip after sniffing)."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)


def _batch_from_columns(buf, ts, off, caplen, wirelen, linktype) -> PacketBatch:  # type: ignore[no-untyped-def]
    packets = np.zeros(len(ts), PACKET_DTYPE)
    if max(ts) > _TS_MAX or min(ts) < -_TS_MAX:  # nonsense timestamps of a corrupt file
        ts = [min(max(t, -_TS_MAX), _TS_MAX) for t in ts]
    packets["ts_ns"] = ts
    packets["off"] = off
    packets["caplen"] = caplen
    packets["wirelen"] = wirelen
    packets["linktype"] = linktype
    parse_records(buf, packets)
    return PacketBatch(buf, packets)


def _walk_pcap_native(buf, pos, big_endian, nanosecond, linktype, limit, out):  # type: ignore[no-untyped-def]
    lib = native()
    consumed = ctypes.c_int64(0)
    error = ctypes.c_int32(0)
    n = lib.nm_walk_pcap(  # type: ignore[union-attr]
        buffer_address(buf) + pos,
        len(buf) - pos,
        int(big_endian),
        int(nanosecond),
        linktype,
        limit,
        out.ctypes.data,
        len(out),
        ctypes.byref(consumed),
        ctypes.byref(error),
    )
    if n:
        out["off"][:n] += pos
    return n, consumed.value, bool(error.value)


def walk_pcap_python(buf, pos, big_endian, nanosecond, linktype, limit, out):  # type: ignore[no-untyped-def]
    """The reference of `nm_walk_pcap`: (records, bytes consumed, corrupt) from buf[pos:]."""
    unpack = struct.Struct(">IIII" if big_endian else "<IIII").unpack_from
    scale = 1 if nanosecond else 1000
    end = len(buf)
    start = pos
    ts, offs, caps, wires = [], [], [], []
    corrupt = False
    while len(ts) < len(out) and pos + 16 <= end:
        sec, frac, incl, orig = unpack(buf, pos)
        if incl > limit:
            corrupt = True
            break
        if pos + 16 + incl > end:
            break
        ts.append(sec * 1_000_000_000 + frac * scale)
        offs.append(pos + 16)
        caps.append(incl)
        wires.append(min(orig, 0x7FFFFFFF))
        pos += 16 + incl
    n = len(ts)
    if n:
        out["ts_ns"][:n] = ts
        out["off"][:n] = offs
        out["caplen"][:n] = caps
        out["wirelen"][:n] = wires
        out["linktype"][:n] = linktype
    return n, pos - start, corrupt


class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    to_ns: Callable[[int], int]


def _resolution(tsresol: int, offset_s: int) -> Callable[[int], int]:
    """ticks -> nanoseconds for an if_tsresol byte (10^-n, or 2^-n with the top bit set)."""
    base = offset_s * 1_000_000_000
    if tsresol & 0x80:
        shift = tsresol & 0x7F
        return lambda t: base + ((t * 1_000_000_000) >> shift)
    if tsresol <= 9:
        mult = 10 ** (9 - tsresol)
        return lambda t: base + t * mult
    div = 10 ** (tsresol - 9)
    return lambda t: base + t // div


class _PcapngWalker:
    """Walks pcapng blocks; keeps the section's byte order and its interfaces."""

    def __init__(self, stats: CaptureStats) -> None:
        self.stats = stats
        self.order = "<"
        self.interfaces: list[_Interface] = []
        self.last_ts = 0
        self.corrupt = False
        self.blocks = 0

    def _corrupt(self, what: str, pos: int) -> None:
        self.corrupt = True
        self.stats.error = (
            f"corrupt pcapng {what} after {self.stats.packets} packets: stopped reading there"
        )

    def walk(self, buf: bytes, pos: int, max_packets: int):  # type: ignore[no-untyped-def]
        """Walk complete blocks from pos; ((ts, off, caplen, wirelen, linktype), pos, stop)."""
        ts: list[int] = []
        off: list[int] = []
        cap: list[int] = []
        wire: list[int] = []
        link: list[int] = []
        end = len(buf)
        stats = self.stats
        while len(ts) < max_packets and pos + 12 <= end:
            kind_bytes = buf[pos : pos + 4]
            if kind_bytes == _PCAPNG_MAGIC:
                magic = buf[pos + 8 : pos + 12]
                if magic == b"\x4d\x3c\x2b\x1a":
                    self.order = "<"
                elif magic == b"\x1a\x2b\x3c\x4d":
                    self.order = ">"
                else:
                    self._corrupt("section header (bad byte-order magic)", pos)
                    return (ts, off, cap, wire, link), pos, True
            order = self.order
            kind, blen = struct.unpack_from(order + "II", buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                self._corrupt(f"block (type {kind:#x}, length {blen})", pos)
                return (ts, off, cap, wire, link), pos, True
            if pos + blen > end:
                break  # incomplete: read more
            self.blocks += 1
            if kind == 6 or kind == 2:  # enhanced / obsolete packet block
                if blen < 32:
                    stats.skip("bad_block")
                else:
                    if kind == 6:
                        iface, hi, lo, caplen, orig = struct.unpack_from(
                            order + "IIIII", buf, pos + 8
                        )
                    else:
                        iface, _, hi, lo, caplen, orig = struct.unpack_from(
                            order + "HHIIII", buf, pos + 8
                        )
                    if caplen > blen - 32:
                        stats.skip("bad_block")
                    elif iface >= len(self.interfaces):
                        stats.skip("unknown_interface")
                    else:
                        itf = self.interfaces[iface]
                        t = itf.to_ns((hi << 32) | lo)
                        self.last_ts = t
                        ts.append(t)
                        off.append(pos + 28)
                        cap.append(caplen)
                        wire.append(min(orig, 0x7FFFFFFF))
                        link.append(itf.linktype)
            elif kind == 3:  # simple packet block: interface 0, no timestamp
                if not self.interfaces:
                    stats.skip("unknown_interface")
                else:
                    itf = self.interfaces[0]
                    (orig,) = struct.unpack_from(order + "I", buf, pos + 8)
                    caplen = min(orig, blen - 16)
                    if itf.snaplen:
                        caplen = min(caplen, itf.snaplen)
                    ts.append(self.last_ts)
                    off.append(pos + 12)
                    cap.append(caplen)
                    wire.append(min(orig, 0x7FFFFFFF))
                    link.append(itf.linktype)
            elif kind == 1:  # interface description
                if blen < 20:
                    stats.skip("bad_block")
                else:
                    self.interfaces.append(self._interface(buf, pos, blen, order))
            elif kind == 0x0A0D0D0A:
                self.interfaces = []  # a new section: its own interfaces
            pos += blen
        return (ts, off, cap, wire, link), pos, False

    def _interface(self, buf: bytes, pos: int, blen: int, order: str) -> _Interface:
        linktype, _, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
        tsresol, tsoffset = 6, 0
        o, end = pos + 16, pos + blen - 4
        while o + 4 <= end:
            code, length = struct.unpack_from(order + "HH", buf, o)
            if code == 0:
                break
            value = buf[o + 4 : o + 4 + length]
            if code == 9 and length >= 1:
                tsresol = value[0]
            elif code == 14 and length >= 8:
                (tsoffset,) = struct.unpack_from(order + "q", value)
            o += 4 + length + (-length % 4)
        if linktype not in self.stats.link_types:
            self.stats.link_types.append(linktype)
        return _Interface(linktype, snaplen, _resolution(tsresol, tsoffset))


def read_packets(path: str | Path) -> Iterator[Packet]:
    """Every packet of a capture, parsed (convenient for scripts and tests; slow for big
    files: the pipeline uses `open_capture(path).batches()`)."""
    with open_capture(path) as reader:
        yield from reader.packets()


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Every frame of a capture as (ts_ns, bytes, link type)."""
    with open_capture(path) as reader:
        yield from reader.frames()
