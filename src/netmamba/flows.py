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

from netmamba.capture.batch import PacketBatch
from netmamba.capture.parse import flow_key
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
    """Assembles flows from packet batches; see the module docstring."""

    def __init__(
        self,
        config: FlowConfig | None = None,
        features: FeatureConfig | None = None,
        source: str | None = None,
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

    def __len__(self) -> int:
        """Open flows."""
        return len(self._flows)

    def add(self, batch: PacketBatch) -> None:
        """Feed one batch of packets (in capture order)."""
        p = batch.packets
        n = len(p)
        if not n:
            return
        buf = batch.buf
        kb = p["key"].tobytes()
        k0 = 1 if self.bidirectional else 0
        status = p["status"].tolist()
        ts_l = p["ts_ns"].tolist()
        iplen_l = p["ip_len"].tolist()
        rev_l = p["rev"].tolist()
        frag_l = p["frag"].tolist()
        off_l = p["off"].tolist()
        ipoff_l = p["ip_off"].tolist()
        payoff_l = p["payload_off"].tolist()
        payend_l = p["payload_end"].tolist()
        smac_l = p["smac_off"].tolist()
        dmac_l = p["dmac_off"].tolist()

        flows = self._flows
        get = flows.get
        to_end = flows.move_to_end
        idle, active = self._idle_ns, self._active_ns
        max_flows = self.config.max_flows or (1 << 62)
        ready_at = self.config.ready_packets or 0
        fc = self.features
        keep_seq, keep_bytes = fc.seq_len, fc.n_packets
        nh, np_ = fc.header_bytes, fc.payload_bytes
        bidi = self.bidirectional
        clock = self.clock
        for i in range(n):
            if status[i]:
                continue
            t = ts_l[i]
            if t > clock:
                clock = t
                if clock >= self._next_sweep:
                    self.clock = clock
                    self._sweep()
            rev = rev_l[i]
            if frag_l[i]:
                key, rev = self._fragment_key(p, i, buf, kb)
                key = key[k0:]
            else:
                key = kb[i * 40 + k0 : i * 40 + 40]
            flow = get(key)
            if flow is not None:
                if t - flow.last_ns > idle or t - flow.first_ns > active:
                    del flows[key]
                    self._finish(flow, "idle" if t - flow.last_ns > idle else "active")
                    flow = None
                else:
                    to_end(key)
            if flow is None:
                flow = Flow(key, rev, t, self.source)
                o = off_l[i]
                if smac_l[i] >= 0:
                    flow.src_mac = buf[o + smac_l[i] : o + smac_l[i] + 6]
                if dmac_l[i] >= 0:
                    flow.dst_mac = buf[o + dmac_l[i] : o + dmac_l[i] + 6]
                flows[key] = flow
                self.counts["flows"] += 1
                if len(flows) > max_flows:
                    self._finish(flows.popitem(last=False)[1], "evicted")
            count = flow.packets = flow.packets + 1
            size = iplen_l[i]
            flow.bytes += size
            if t > flow.last_ns:
                flow.last_ns = t
            if count <= keep_seq or count <= keep_bytes:
                forward = not bidi or rev == flow.rev
                if count <= keep_seq:
                    flow.ts.append(t)
                    flow.sizes.append(size if forward else -size)
                if count <= keep_bytes:
                    o = off_l[i]
                    ip0, pay0 = o + ipoff_l[i], o + payoff_l[i]
                    flow.headers.append(buf[ip0 : min(pay0, ip0 + nh)])
                    flow.payloads.append(buf[pay0 : min(o + payend_l[i], pay0 + np_)])
                    flow.dirs.append(1 if forward else -1)
            if count == ready_at:
                self.ready.append(flow)
        self.clock = clock

    def _fragment_key(self, p, i: int, buf: bytes, kb: bytes) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
        """The full (40-byte) key of a fragment: later fragments get their first's ports."""
        rec = p[i]
        o = int(rec["off"]) + int(rec["ip_off"])
        version, proto = int(rec["version"]), int(rec["proto"])
        if version == 4:
            src, dst = buf[o + 12 : o + 16], buf[o + 16 : o + 20]
        else:
            src, dst = buf[o + 8 : o + 24], buf[o + 24 : o + 40]
        ident = (version, proto, src, dst, int(rec["frag_id"]))
        if rec["frag"] == 1:
            self._fragments[ident] = (int(rec["sport"]), int(rec["dport"]))
            if len(self._fragments) > _FRAGMENT_MEMORY:
                del self._fragments[next(iter(self._fragments))]
            return kb[i * 40 : i * 40 + 40], int(rec["rev"])
        sport, dport = self._fragments.get(ident, (0, 0))
        rev, key = flow_key(version, proto, src, dst, sport, dport)
        return key, rev

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

    def advance(self, now_ns: int) -> None:
        """Move the clock without a packet (a quiet live link) and export idle flows."""
        if now_ns > self.clock:
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
