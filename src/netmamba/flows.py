"""Flow assembly: a meter that turns parsed packets into flows (SPEC section 2).

A flow is the packets that share a 5-tuple: uni-directional (one direction; the paper's
setting) or a bi-directional session (both directions together; the client is the first
sender). The meter is fed batches of packets in capture order and driven by packet time only,
so the same code serves offline captures and the live service:

    meter = FlowMeter(FlowConfig(mode="bidirectional"), FeatureConfig(), source="a.pcap")
    for batch in reader.batches():
        meter.add(batch)
        for flow in meter.pop_finished(): ...     # ended by idle / active timeout or eviction
        for flow in meter.pop_ready(): ...        # reached `ready_packets` (still counting)
    for flow in meter.flush(): ...                # the flows still open at the end

Per flow it keeps only what the features need: timestamps and signed sizes of the first M_seq
packets, header and payload bytes (already cropped to N_h and N_p) and directions of the first
M_b, plus counters (packets, bytes = sum of IP lengths), first/last timestamps, the MAC
addresses of the first packet (metadata only, never model input) and the source file.

Memory is bounded by `max_flows` (the least recently active flow is exported first, counted as
`evicted`); flows idle longer than `idle_timeout` are exported as packet time passes (one
check of the oldest flow per advance of the clock, O(1) amortised), and a flow older than
`max_duration` is exported when its next packet arrives, which then starts a new flow.

IPv4/IPv6 fragments after the first carry no ports: the meter remembers the ports of recent
first fragments (by addresses, protocol and fragment id) and puts later fragments in the same
flow; a fragment whose first piece was not seen gets ports 0.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from netmamba.capture.batch import PacketBatch
from netmamba.capture.parse import KEY_SIZE, flow_key
from netmamba.config import Config, ConfigError
from netmamba.features import FeatureConfig

MODES = ("unidirectional", "bidirectional")
END_REASONS = ("idle", "active", "evicted", "end")
_FRAGMENT_MEMORY = 65536  # first fragments remembered for their ports


@dataclass
class FlowConfig(Config):
    """How packets are grouped into flows."""

    mode: str = "unidirectional"  # or "bidirectional" (sessions: both directions, signed sizes)
    idle_timeout: float = 120.0  # seconds without a packet that end a flow
    max_duration: float = 1800.0  # seconds after its first packet a flow is cut (active timeout)
    max_flows: int | None = 1_000_000  # open flows at most (None: unbounded)
    ready_packets: int | None = None  # report a flow as ready when it has this many packets

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"FlowConfig.mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        if self.idle_timeout <= 0 or self.max_duration <= 0:
            raise ConfigError("FlowConfig.idle_timeout and max_duration must be positive seconds")
        if self.max_flows is not None and self.max_flows < 1:
            raise ConfigError("FlowConfig.max_flows must be at least 1 (or None)")
        if self.ready_packets is not None and self.ready_packets < 1:
            raise ConfigError("FlowConfig.ready_packets must be at least 1 (or None)")

    @property
    def bidirectional(self) -> bool:
        return self.mode == "bidirectional"


def _ip_text(version: int, packed16: bytes) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, packed16[:4])
    return socket.inet_ntop(socket.AF_INET6, packed16)


class Flow:
    """One flow: identity, counters and the first packets' data (see the module docstring).

    `key` is the meter's dictionary key: 40 bytes (uni-directional) or its last 39 bytes
    (session); `rev` is the direction bit of the first packet (netmamba.capture.flow_key).
    """

    __slots__ = (
        "bytes",
        "dirs",
        "dst_mac",
        "end_reason",
        "first_ns",
        "headers",
        "key",
        "last_ns",
        "packets",
        "payloads",
        "rev",
        "sizes",
        "source",
        "src_mac",
        "ts",
    )

    def __init__(self, key: bytes, rev: int, ts_ns: int, source: str | None) -> None:
        self.key = key
        self.rev = rev
        self.first_ns = ts_ns
        self.last_ns = ts_ns
        self.packets = 0
        self.bytes = 0
        self.source = source
        self.src_mac: bytes | None = None
        self.dst_mac: bytes | None = None
        self.end_reason = ""
        self.ts: list[int] = []  # first M_seq timestamps (ns)
        self.sizes: list[int] = []  # first M_seq IP lengths, negative towards the client
        self.headers: list[bytes] = []  # first M_b: IP + transport header, cropped to N_h
        self.payloads: list[bytes] = []  # first M_b: transport payload, cropped to N_p
        self.dirs: list[int] = []  # first M_b: +1 from the first sender, -1 towards it

    @property
    def session_key(self) -> bytes:
        """39 bytes shared by both directions: version, protocol, then the sorted endpoints."""
        return self.key[-39:]

    @property
    def version(self) -> int:
        return self.key[-39]

    @property
    def proto(self) -> int:
        return self.key[-38]

    def _endpoint(self, first: bool) -> tuple[bytes, int]:
        k = self.key[-39:]
        a = (k[7:23], int.from_bytes(k[3:5], "big"))
        b = (k[23:39], int.from_bytes(k[5:7], "big"))
        return (a if self.rev == 0 else b) if first else (b if self.rev == 0 else a)

    @property
    def src(self) -> str:
        """Address of the first sender (the client of a session)."""
        return _ip_text(self.version, self._endpoint(True)[0])

    @property
    def dst(self) -> str:
        return _ip_text(self.version, self._endpoint(False)[0])

    @property
    def sport(self) -> int:
        return self._endpoint(True)[1]

    @property
    def dport(self) -> int:
        return self._endpoint(False)[1]

    @property
    def session(self) -> str:
        """The session as text, the same for both directions: 'proto ip_a port_a ip_b port_b'
        with the endpoints sorted."""
        k = self.key[-39:]
        a = _ip_text(k[0], k[7:23])
        b = _ip_text(k[0], k[23:39])
        pa, pb = int.from_bytes(k[3:5], "big"), int.from_bytes(k[5:7], "big")
        return f"{k[1]} {a} {pa} {b} {pb}"

    def __repr__(self) -> str:
        return (
            f"Flow({self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}, "
            f"{self.packets} packets, {self.bytes} bytes, end={self.end_reason or 'open'})"
        )


class FlowMeter:
    """Assembles flows from packet batches; see the module docstring.

    With the native kernel (csrc/packets.c, `nm_meter_*`) the per-packet work (flow lookup,
    LRU order, timeouts, eviction, counters) runs in C and Python only sees the packets that
    start a flow or are among its first max(M_b, M_seq), and the flows that end; without it,
    the same in Python (`native=False` forces that reference path; both give identical flows).
    The packet and byte counters of an open flow are brought up to date when it is reported
    (ready or finished); `len(meter)` is the number of open flows.
    """

    def __init__(
        self,
        config: FlowConfig | None = None,
        features: FeatureConfig | None = None,
        source: str | None = None,
        *,
        native: bool | None = None,
    ) -> None:
        self.config = config or FlowConfig()
        self.features = features or FeatureConfig()
        self.source = source
        self.bidirectional = self.config.bidirectional
        self.clock = -(1 << 62)  # the latest packet time seen (ns)
        self.counts = dict.fromkeys(("flows", *END_REASONS), 0)
        self.finished: list[Flow] = []
        self.ready: list[Flow] = []
        self._flows: OrderedDict[bytes, Flow] = OrderedDict()  # least recently active first
        self._fragments: dict[tuple, tuple[int, int]] = {}
        self._idle_ns = int(self.config.idle_timeout * 1e9)
        self._active_ns = int(self.config.max_duration * 1e9)
        self._next_sweep = self.clock
        self._lib = _native_lib() if native is not False else None
        if native and self._lib is None:
            raise RuntimeError("the native packet kernel is not available")
        self._handle = None
        self._slots: dict[int, Flow] = {}
        if self._lib is not None:
            self._handle = self._lib.nm_meter_new(
                1 if self.bidirectional else 0,
                self._idle_ns,
                self._active_ns,
                self.config.max_flows or (1 << 62),
            )
            if not self._handle:
                raise MemoryError("cannot allocate the flow table")

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.nm_meter_free(self._handle)  # type: ignore[union-attr]
            self._handle = None

    def __len__(self) -> int:
        """Open flows."""
        if self._handle:
            return int(self._lib.nm_meter_open(self._handle))  # type: ignore[union-attr]
        return len(self._flows)

    def add(self, batch: PacketBatch) -> None:
        """Feed one batch of packets (in capture order)."""
        p = batch.packets
        ok = p["status"] == 0
        if not ok.all():
            p = p[ok]
        if not len(p):
            return
        if p["frag"].any():
            if p is batch.packets:
                p = p.copy()  # fragment keys are rewritten: never in the caller's batch
            self._fragment_keys(p, batch.buf)
        if self._handle:
            self._add_native(p, batch.buf)
        else:
            self._add_python(p, batch.buf)

    def _positions(self, p) -> list[list[int]]:  # type: ignore[no-untyped-def]
        """Absolute positions in the batch buffer of each packet's cropped header (start, end),
        cropped payload (start, end) and MAC addresses (-1: none)."""
        fc = self.features
        off = p["off"]
        h0 = off + p["ip_off"]
        p0 = off + p["payload_off"]
        h1 = np.minimum(p0, h0 + fc.header_bytes)
        p1 = np.minimum(off + p["payload_end"], p0 + fc.payload_bytes)
        smac = np.where(p["smac_off"] >= 0, off + p["smac_off"], -1)
        dmac = np.where(p["dmac_off"] >= 0, off + p["dmac_off"], -1)
        return [a.tolist() for a in (h0, h1, p0, p1, smac, dmac)]

    def _new_flow(self, key: bytes, rev: int, t: int, buf: bytes, sm: int, dm: int) -> Flow:
        flow = Flow(key, rev, t, self.source)
        if sm >= 0:
            flow.src_mac = buf[sm : sm + 6]
        if dm >= 0:
            flow.dst_mac = buf[dm : dm + 6]
        self.counts["flows"] += 1
        return flow

    def _add_python(self, p, buf: bytes) -> None:  # type: ignore[no-untyped-def]
        """The reference meter: one packet at a time."""
        h0, h1, p0, p1, smac, dmac = self._positions(p)
        k0 = 1 if self.bidirectional else 0
        size_k = KEY_SIZE - k0
        kb = np.ascontiguousarray(p["key"][:, k0:]).tobytes()
        keys = [kb[j : j + size_k] for j in range(0, len(kb), size_k)]
        flows = self._flows
        get = flows.get
        to_end = flows.move_to_end
        idle, active = self._idle_ns, self._active_ns
        max_flows = self.config.max_flows or (1 << 62)
        ready_at = self.config.ready_packets or 0
        fc = self.features
        keep_seq, keep_bytes = fc.seq_len, fc.n_packets
        keep = max(keep_seq, keep_bytes)
        bidi = self.bidirectional
        clock = self.clock
        for key, t, size, rev, a0, a1, b0, b1, sm, dm in zip(
            keys,
            p["ts_ns"].tolist(),
            p["ip_len"].tolist(),
            p["rev"].tolist(),
            h0,
            h1,
            p0,
            p1,
            smac,
            dmac,
            strict=True,
        ):
            if t > clock:
                clock = t
                if clock >= self._next_sweep:
                    self.clock = clock
                    self._sweep()
            flow = get(key)
            if flow is not None and t - flow.last_ns <= idle and t - flow.first_ns <= active:
                to_end(key)
            else:
                if flow is not None:
                    del flows[key]
                    self._finish(flow, "idle" if t - flow.last_ns > idle else "active")
                flow = flows[key] = self._new_flow(key, rev, t, buf, sm, dm)
                if len(flows) > max_flows:
                    self._finish(flows.popitem(last=False)[1], "evicted")
            count = flow.packets = flow.packets + 1
            flow.bytes += size
            if t > flow.last_ns:
                flow.last_ns = t
            if count <= keep:
                forward = not bidi or rev == flow.rev
                if count <= keep_seq:
                    flow.ts.append(t)
                    flow.sizes.append(size if forward else -size)
                if count <= keep_bytes:
                    flow.headers.append(buf[a0:a1])
                    flow.payloads.append(buf[b0:b1])
                    flow.dirs.append(1 if forward else -1)
            if count == ready_at:
                self.ready.append(flow)
        self.clock = clock

    def _events(self, room: int) -> tuple[list[np.ndarray], list]:
        arrays = [
            np.empty(room, np.int64),  # position
            np.empty(room, np.int32),  # slot
            np.empty(room, np.uint8),  # reason
            np.empty(room, np.int64),  # first
            np.empty(room, np.int64),  # last
            np.empty(room, np.int64),  # packets
            np.empty(room, np.int64),  # bytes
        ]
        return arrays, [a.ctypes.data for a in arrays]

    def _take_events(self, arrays: list[np.ndarray], n: int) -> list[tuple]:
        if n < 0:
            raise MemoryError("the flow table ran out of memory")
        return list(zip(*(a[:n].tolist() for a in arrays), strict=True))

    def _finish_slot(
        self, slot: int, reason: int, first: int, last: int, packets: int, nbytes: int
    ) -> None:
        flow = self._slots.pop(slot)
        flow.first_ns, flow.last_ns, flow.packets, flow.bytes = first, last, packets, nbytes
        self._finish(flow, END_REASONS[reason])

    def _add_native(self, p, buf: bytes) -> None:  # type: ignore[no-untyped-def]
        """Per-packet work in C; Python handles new flows, stored packets and ended flows."""
        lib = self._lib
        n = len(p)
        slots = np.empty(n, np.int32)
        counts = np.empty(n, np.int64)
        new = np.empty(n, np.uint8)
        ev, ptrs = self._events(len(self) + 2 * n + 1)
        n_ev = lib.nm_meter_add(  # type: ignore[union-attr]
            self._handle,
            p.ctypes.data,
            n,
            slots.ctypes.data,
            counts.ctypes.data,
            new.ctypes.data,
            *ptrs,
            len(ev[0]),
        )
        events = self._take_events(ev, n_ev)
        self.clock = max(self.clock, int(p["ts_ns"].max()))
        fc = self.features
        keep_seq, keep_bytes = fc.seq_len, fc.n_packets
        ready_at = self.config.ready_packets or 0
        chosen = (counts <= max(keep_seq, keep_bytes)) | (new == 1)
        if ready_at:
            chosen |= counts == ready_at
        index = np.flatnonzero(chosen)
        q = p[index]
        k0 = 1 if self.bidirectional else 0
        size_k = KEY_SIZE - k0
        fresh = new[index] == 1
        kb = np.ascontiguousarray(q["key"][fresh, k0:]).tobytes()
        keys = iter([kb[j : j + size_k] for j in range(0, len(kb), size_k)])
        h0, h1, p0, p1, smac, dmac = self._positions(q)
        bidi = self.bidirectional
        flows = self._slots
        e = 0
        n_events = len(events)
        for i, slot, count, is_new, t, size, rev, a0, a1, b0, b1, sm, dm in zip(
            index.tolist(),
            slots[index].tolist(),
            counts[index].tolist(),
            fresh.tolist(),
            q["ts_ns"].tolist(),
            q["ip_len"].tolist(),
            q["rev"].tolist(),
            h0,
            h1,
            p0,
            p1,
            smac,
            dmac,
            strict=True,
        ):
            while e < n_events and events[e][0] <= i:
                self._finish_slot(*events[e][1:])
                e += 1
            if is_new:
                flow = flows[slot] = self._new_flow(next(keys), rev, t, buf, sm, dm)
            else:
                flow = flows[slot]
            forward = not bidi or rev == flow.rev
            if count <= keep_seq:
                flow.ts.append(t)
                flow.sizes.append(size if forward else -size)
            if count <= keep_bytes:
                flow.headers.append(buf[a0:a1])
                flow.payloads.append(buf[b0:b1])
                flow.dirs.append(1 if forward else -1)
            if count == ready_at:
                self._sync(slot, flow)
                self.ready.append(flow)
        for event in events[e:]:
            self._finish_slot(*event[1:])

    def _sync(self, slot: int, flow: Flow) -> None:
        out = np.empty(4, np.int64)
        self._lib.nm_meter_counters(self._handle, slot, out.ctypes.data)  # type: ignore[union-attr]
        flow.first_ns, flow.last_ns, flow.packets, flow.bytes = out.tolist()

    def _fragment_keys(self, p, buf: bytes) -> None:  # type: ignore[no-untyped-def]
        """Give later fragments the key (ports) of their first fragment, in packet order."""
        index = np.flatnonzero(p["frag"])
        f = p[index]
        ip0 = (f["off"] + f["ip_off"]).tolist()
        memory = self._fragments
        later: list[int] = []
        later_keys: list[bytes] = []
        later_revs: list[int] = []
        for i, o, version, proto, ident, kind, sport, dport in zip(
            index.tolist(),
            ip0,
            f["version"].tolist(),
            f["proto"].tolist(),
            f["frag_id"].tolist(),
            f["frag"].tolist(),
            f["sport"].tolist(),
            f["dport"].tolist(),
            strict=True,
        ):
            if version == 4:
                src, dst = buf[o + 12 : o + 16], buf[o + 16 : o + 20]
            else:
                src, dst = buf[o + 8 : o + 24], buf[o + 24 : o + 40]
            name = (version, proto, src, dst, ident)
            if kind == 1:
                memory[name] = (sport, dport)
                if len(memory) > _FRAGMENT_MEMORY:
                    del memory[next(iter(memory))]
                continue
            sport, dport = memory.get(name, (0, 0))
            rev, key = flow_key(version, proto, src, dst, sport, dport)
            later.append(i)
            later_keys.append(key)
            later_revs.append(rev)
        if later:
            p["key"][later] = np.frombuffer(b"".join(later_keys), np.uint8).reshape(-1, KEY_SIZE)
            p["rev"][later] = later_revs

    def _finish(self, flow: Flow, reason: str) -> None:
        flow.end_reason = reason
        self.counts[reason] += 1
        self.finished.append(flow)

    def _sweep(self) -> None:
        """Export the flows idle for longer than the idle timeout (least recent first)."""
        flows, idle, clock = self._flows, self._idle_ns, self.clock
        while flows:
            key = next(iter(flows))
            flow = flows[key]
            if clock - flow.last_ns > idle:
                del flows[key]
                self._finish(flow, "idle")
            else:
                self._next_sweep = flow.last_ns + idle + 1
                return
        self._next_sweep = clock + idle + 1

    def _native_advance(self, now_ns: int, end: bool) -> None:
        ev, ptrs = self._events(len(self) + 1)
        n = self._lib.nm_meter_advance(  # type: ignore[union-attr]
            self._handle, now_ns, int(end), *ptrs, len(ev[0])
        )
        for event in self._take_events(ev, n):
            self._finish_slot(*event[1:])

    def advance(self, now_ns: int) -> None:
        """Move the clock without a packet (a quiet live link) and export idle flows."""
        if self._handle:
            self.clock = max(self.clock, now_ns)
            self._native_advance(now_ns, False)
        elif now_ns > self.clock:
            self.clock = now_ns
            if now_ns >= self._next_sweep:
                self._sweep()

    def pop_finished(self) -> list[Flow]:
        out, self.finished = self.finished, []
        return out

    def pop_ready(self) -> list[Flow]:
        out, self.ready = self.ready, []
        return out

    def flush(self) -> list[Flow]:
        """End every open flow (reason 'end') and return all finished flows not yet taken."""
        if self._handle:
            self._native_advance(0, True)
        while self._flows:
            self._finish(self._flows.popitem(last=False)[1], "end")
        return self.pop_finished()

    def run(self, batches: Iterable[PacketBatch]) -> Iterator[Flow]:
        """Every flow of a stream of batches, in the order they end; flushed at the end."""
        for batch in batches:
            self.add(batch)
            if self.finished:
                yield from self.pop_finished()
        yield from self.flush()


def _native_lib():  # type: ignore[no-untyped-def]
    from netmamba.capture.batch import native

    return native()
