"""The service's flow table: `netmamba.flows.FlowMeter` with the checkpoint's flow settings,
handing each flow over for classification exactly once.

A flow is handed over (as a `ReadyFlow` with its arrays) at the first of:

- ready: it has `ready_packets` packets, max(M_b, M_seq) of the model: all it will ever read
  (the flow stays in the meter, which keeps counting it, so its later packets still belong to it
  and do not start a new flow; when it ends it is not handed over again);
- its end: idle or active timeout, eviction from a full table, end of input (or of one capture
  of several), with what it has: `short` when that is fewer than ready_packets;
- the deadline, when `classify_within_s` is set: a flow that old is classified with what it
  has, like the paper's fixed window (off by default, so replays give `netmamba classify`'s
  flows and labels). Batches are cut where deadlines fall, so such a flow has exactly its
  packets up to then; a quiet link's deadlines pass on `expire`.

Flows with fewer packets than the model's training flows had (`min_packets`, as `classify`
decides) are counted as too short and not classified, and so are flows of protocols the
model's training data left out (`protocol_filter`), unless `include_short`.

Only the first packets of a flow are kept (the meter stores the first max(M_b, M_seq) and
counts the rest); a flow handed over early has its stored packets released at once.
Arrays are made by `netmamba.features.flow_arrays` with the training data's geometry and
de-biasing, as `classify` makes them; the Predictor in the worker crops them to the model's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netmamba.capture.batch import PacketBatch
from netmamba.config import Config, ConfigError
from netmamba.dataset.config import PROTOCOL_FILTERS, protocol_excluded
from netmamba.debias import DebiasConfig
from netmamba.features import FeatureConfig, flow_arrays
from netmamba.flows import Flow, FlowConfig, FlowMeter
from netmamba.serve.service import ReadyFlow

log = logging.getLogger(__name__)


@dataclass
class FlowTableConfig(Config):
    """When the service's flow table hands flows over (the flow settings are the model's)."""

    ready_packets: int = 20  # classify a flow once it has this many packets: max(M_b, M_seq)
    min_packets: int = 1  # flows ending with fewer are too short for the model (not classified)
    protocol_filter: str = "none"  # the training data's: flows it leaves out are not classified
    include_short: bool = False  # classify too-short and other-protocol flows anyway
    classify_within_s: float | None = None  # classify a flow this old with what it has
    max_flows: int | None = None  # open flows at most (None: the model's FlowConfig.max_flows)

    def __post_init__(self) -> None:
        if self.protocol_filter not in PROTOCOL_FILTERS:
            raise ConfigError(
                f"FlowTableConfig.protocol_filter must be one of {', '.join(PROTOCOL_FILTERS)}"
            )
        if self.ready_packets < 1 or self.min_packets < 1:
            raise ConfigError("FlowTableConfig.ready_packets and min_packets must be >= 1")
        if self.classify_within_s is not None and self.classify_within_s <= 0:
            raise ConfigError("FlowTableConfig.classify_within_s must be positive seconds")
        if self.max_flows is not None and self.max_flows < 1:
            raise ConfigError("FlowTableConfig.max_flows must be at least 1 (or None)")


def table_config_for(info: Any, **settings: Any) -> FlowTableConfig:
    """The flow table a model needs (`info`, a CheckpointInfo): when its flows are ready, the
    fewest packets and the protocols its training data had; other `settings` as given."""
    return FlowTableConfig(
        ready_packets=info.ready_packets,
        min_packets=info.min_packets,
        protocol_filter=info.protocol_filter,
        **settings,
    )


class _TrackingMeter(FlowMeter):
    """A FlowMeter that also lists its open flows in creation order (for the deadline)."""

    def __init__(self, *args: Any, opened: dict[int, Flow], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opened = opened

    def _new_flow(self, key: bytes, rev: int, t: int, buf: bytes, sm: int, dm: int) -> Flow:
        flow = super()._new_flow(key, rev, t, buf, sm, dm)
        self._opened[id(flow)] = flow
        return flow


def _release(flow: Flow) -> None:
    """Drop a classified flow's stored packets (the meter only appends to these lists)."""
    flow.ts, flow.sizes, flow.headers, flow.payloads, flow.dirs = [], [], [], [], []


class MeterFlowTable:
    """The `FlowTable` of `netmamba.serve.service` over `netmamba.flows.FlowMeter`."""

    def __init__(
        self,
        flow: FlowConfig,
        features: FeatureConfig,
        debias: DebiasConfig | None,
        config: FlowTableConfig | None = None,
        source: str | None = None,
        *,
        native: bool | None = None,
    ) -> None:
        self.config = config or FlowTableConfig()
        c = self.config
        self.flow_config = flow.replace(
            ready_packets=c.ready_packets,
            max_flows=c.max_flows if c.max_flows is not None else flow.max_flows,
        )
        self.features, self.debias = features, debias
        self.source = source
        self._native = native
        self._deadline_ns = (
            int(c.classify_within_s * 1e9) if c.classify_within_s is not None else None
        )
        self._opened: dict[int, Flow] = {}  # open, not yet handed over (deadline only)
        self._early: dict[int, Flow] = {}  # handed over, still open in the meter
        self._flows_before = 0  # flows of the meters of earlier captures
        self.flows_evicted = 0  # evicted before being handed over
        self.flows_too_short = 0  # ended with fewer than min_packets: not classified
        self.flows_other_protocol = 0  # left out by the protocol filter: not classified
        self.flows_deadline = 0  # handed over at the deadline
        self.meter = self._new_meter(source)

    def _new_meter(self, source: str | None) -> FlowMeter:
        if self._deadline_ns is None:
            return FlowMeter(self.flow_config, self.features, source, native=self._native)
        return _TrackingMeter(
            self.flow_config, self.features, source, native=self._native, opened=self._opened
        )

    # -- the FlowTable interface -------------------------------------------------------------

    @property
    def flows_seen(self) -> int:
        return self._flows_before + self.meter.counts["flows"]

    @property
    def active_flows(self) -> int:
        return len(self.meter)

    def add(self, packets: Any) -> list[ReadyFlow]:
        """Packets: a parsed PacketBatch (replays) or (ts_ns, frame, linktype)s (live)."""
        batch = packets if isinstance(packets, PacketBatch) else PacketBatch.from_frames(packets)
        if self._deadline_ns is None:
            self.meter.add(batch)
            return self._take(self.meter.pop_ready(), self.meter.pop_finished())
        return self._add_with_deadline(batch, self._deadline_ns)

    def _add_with_deadline(self, batch: PacketBatch, deadline: int) -> list[ReadyFlow]:
        """Add the batch in slices that no deadline falls inside: a slice ends before the
        oldest open flow's deadline, and spans less than the deadline (a flow it starts is not
        due within it), so each flow is handed over with exactly its packets up to then."""
        out: list[ReadyFlow] = []
        ts = np.maximum.accumulate(batch.packets["ts_ns"])  # capture order, time never back
        start, n = 0, len(batch)
        while start < n:
            now = int(ts[start])
            out += self._due(now)
            limit = now + deadline
            if self._opened:
                limit = min(limit, next(iter(self._opened.values())).first_ns + deadline)
            end = max(start + 1, int(np.searchsorted(ts, limit, side="left")))
            self.meter.add(PacketBatch(batch.buf, batch.packets[start:end]))
            out += self._take(self.meter.pop_ready(), self.meter.pop_finished())
            start = end
        return out + self._due(self.meter.clock)

    def expire(self, now_ns: int) -> list[ReadyFlow]:
        """Time passed without packets (a quiet link): idle flows end, deadlines pass."""
        self.meter.advance(now_ns)
        out = self._take(self.meter.pop_ready(), self.meter.pop_finished())
        if self._deadline_ns is not None:
            out += self._due(max(now_ns, self.meter.clock))
        return out

    def flush(self) -> list[ReadyFlow]:
        """The end of input: every open flow ends."""
        return self._take(self.meter.pop_ready(), self.meter.flush())

    def next_capture(self, source: str) -> list[ReadyFlow]:
        """The capture being read ended and `source` begins: its open flows end (as in
        `classify`, where each capture has a meter of its own)."""
        out = self.flush()
        self._flows_before += self.meter.counts["flows"]
        self._early.clear()
        self._opened.clear()
        self.source = source
        self.meter = self._new_meter(source)
        return out

    # -- handing flows over ----------------------------------------------------------------------

    def _take(self, ready: list[Flow], finished: list[Flow]) -> list[ReadyFlow]:
        chosen: list[Flow] = []
        for flow in ready:
            key = id(flow)
            if key in self._early:  # handed over at its deadline already
                continue
            self._opened.pop(key, None)
            self._early[key] = flow
            chosen.append(flow)
        for flow in finished:
            key = id(flow)
            if self._early.pop(key, None) is not None:  # handed over when ready
                continue
            self._opened.pop(key, None)
            if flow.end_reason == "evicted":
                self.flows_evicted += 1
            chosen.append(flow)
        return self._hand_over(chosen)

    def _due(self, now_ns: int) -> list[ReadyFlow]:
        """Open flows past the deadline, oldest first (creation order is first-packet order)."""
        assert self._deadline_ns is not None
        chosen = []
        opened = self._opened
        while opened:
            key = next(iter(opened))
            flow = opened[key]
            if now_ns - flow.first_ns < self._deadline_ns:
                break
            del opened[key]
            self._early[key] = flow
            chosen.append(flow)
        self.flows_deadline += len(chosen)
        return self._hand_over(chosen)

    def _hand_over(self, flows: Sequence[Flow]) -> list[ReadyFlow]:
        if not flows:
            return []
        c = self.config
        kept: list[Flow] = []
        counts: list[tuple[int, int, int]] = []
        for flow in flows:
            packets, nbytes, last_ns = _counters(flow)
            if not c.include_short and (
                protocol_excluded(c.protocol_filter, flow.proto, flow.sport, flow.dport)
            ):
                self.flows_other_protocol += 1
                _release(flow)
                continue
            if packets < c.min_packets and not c.include_short:
                self.flows_too_short += 1
                _release(flow)
                continue
            kept.append(flow)
            counts.append((packets, nbytes, last_ns))
        if not kept:
            return []
        arrays = flow_arrays(kept, self.features, self.debias)
        out = []
        for i, (flow, (packets, nbytes, last_ns)) in enumerate(zip(kept, counts, strict=True)):
            out.append(
                ReadyFlow(
                    protocol=flow.proto,
                    src_ip=flow.src,
                    src_port=flow.sport,
                    dst_ip=flow.dst,
                    dst_port=flow.dport,
                    first_ts_ns=flow.first_ns,
                    last_ts_ns=last_ns,
                    packets=packets,
                    bytes=nbytes,
                    arrays={k: v[i] for k, v in arrays.items()},
                    short=packets < c.ready_packets,
                    source=flow.source,
                )
            )
            _release(flow)
        return out


def _counters(flow: Flow) -> tuple[int, int, int]:
    """(packets, bytes, last timestamp) of a flow as far as it is known now.

    The native meter brings an open flow's counters up to date only when it reports the flow;
    one handed over at its deadline has fewer packets than it stores (else it would have been
    ready), so its stored packets are all of them."""
    if flow.packets:
        return flow.packets, flow.bytes, flow.last_ns
    packets = max(len(flow.ts), len(flow.headers))
    nbytes = int(np.abs(np.asarray(flow.sizes, np.int64)).sum()) if flow.sizes else 0
    return packets, nbytes, max(flow.ts) if flow.ts else flow.last_ns
