"""Helpers shared by the service tests (imported by name: tests/serve is on sys.path)."""

from __future__ import annotations

import os
import time

import numpy as np

from netmamba.serve.batcher import PredictFn
from netmamba.serve.service import ReadyFlow
from netmamba.serve.store import FlowRecord


def record(
    flow_id: str,
    label: str = "web",
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 40000,
    dport: int = 443,
    protocol: int = 6,
    t: float = 1_699_999_980.0,
    first_ts: float | None = None,
    packets: int = 5,
    nbytes: int = 1000,
    unknown: bool = False,
    short: bool = False,
    source: str = "eth0",
) -> FlowRecord:
    """A record classified at `t` (first packet 2 s earlier unless `first_ts`)."""
    first = t - 2.0 if first_ts is None else first_ts
    return FlowRecord(
        flow_id=flow_id,
        source=source,
        protocol=protocol,
        src_ip=src,
        src_port=sport,
        dst_ip=dst,
        dst_port=dport,
        first_ts=first,
        last_ts=first + 1.5,
        packets=packets,
        bytes=nbytes,
        label=label,
        confidence=0.75,
        top=[(label, 0.75), ("other", 0.2), ("third", 0.05)],
        unknown=unknown,
        classified_at=t,
        short=short,
    )


# --- predict functions for the batcher's worker (module level: the worker imports them) --------

SPEC = {"x": ((4,), "uint8"), "y": ((3,), "float32")}


def summing_predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An honest stand-in for a model: outputs computed from each flow's own arrays."""
    x = arrays["x"].astype(np.int64)
    return {"total": x.sum(axis=1), "scaled": arrays["y"] * 2.0, "rows": np.full(len(x), len(x))}


def make_summing(delay_s: float = 0.0, gate: str | None = None) -> PredictFn:
    """summing_predict, optionally slowed down or held until the file `gate` exists."""

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        while gate is not None and not os.path.exists(gate):
            time.sleep(0.01)
        time.sleep(delay_s)
        return summing_predict(arrays)

    return predict


def make_failing() -> PredictFn:
    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("the model exploded on purpose")

    return predict


def make_nothing() -> PredictFn:
    raise FileNotFoundError("no checkpoint at /nowhere/model")


def flow_arrays(i: int) -> dict[str, np.ndarray]:
    """Arrays of flow i, different for every i."""
    return {
        "x": np.array([i % 256, (i * 7) % 256, 1, 2], dtype=np.uint8),
        "y": np.array([i, -i, 0.5], dtype=np.float32),
    }


# --- a stand-in flow table and model for service tests -----------------------------------------

LABELS = ["web", "dns", "voip", "chat"]


def packet(flow: int, ts_ns: int, size: int = 100) -> tuple[int, bytes, int]:
    """A synthetic packet of flow `flow`: its first 4 bytes name the flow."""
    return (ts_ns, b"%04d" % flow + bytes(size - 4), 1)


def label_of(flow: int) -> str:
    """The label make_label_predict gives flow `flow` (by hand: x[0] = flow % 256)."""
    return LABELS[(flow % 256) % len(LABELS)]


class KeyedFlowTable:
    """Groups packets by their first 4 bytes (not a real flow meter: the service's tests only
    need something that hands over flows with known arrays). A flow is ready at `need`
    packets; an idle one (no packet for `idle_ns`) is handed over short."""

    def __init__(self, need: int = 3, idle_ns: int = 1_000_000_000) -> None:
        self.need, self.idle_ns = need, idle_ns
        self.flows: dict[int, list[tuple[int, int]]] = {}  # flow -> [(ts, size)]
        self.done: set[int] = set()
        self.flows_seen = self.flows_evicted = 0

    @property
    def active_flows(self) -> int:
        return len(self.flows)

    def _ready(self, flow: int, short: bool) -> ReadyFlow:
        packets = self.flows.pop(flow)
        self.done.add(flow)
        return ReadyFlow(
            protocol=17 if flow % 2 else 6,
            src_ip=f"10.1.{flow // 250}.{flow % 250 + 1}",
            src_port=10000 + flow,
            dst_ip="192.0.2.1",
            dst_port=443,
            first_ts_ns=packets[0][0],
            last_ts_ns=packets[-1][0],
            packets=len(packets),
            bytes=sum(size for _, size in packets),
            arrays=flow_arrays(flow),
            short=short,
        )

    def add(self, packets: list[tuple[int, bytes, int]]) -> list[ReadyFlow]:
        ready = []
        for ts, data, _ in packets:
            flow = int(data[:4])
            if flow in self.done:
                continue
            if flow not in self.flows:
                self.flows[flow] = []
                self.flows_seen += 1
            self.flows[flow].append((ts, len(data)))
            if len(self.flows[flow]) >= self.need:
                ready.append(self._ready(flow, short=False))
        return ready

    def expire(self, now_ns: int) -> list[ReadyFlow]:
        idle = [f for f, p in self.flows.items() if now_ns - p[-1][0] > self.idle_ns]
        return [self._ready(f, short=True) for f in idle]

    def flush(self) -> list[ReadyFlow]:
        return [self._ready(f, short=True) for f in list(self.flows)]


def make_label_predict(delay_s: float = 0.0) -> PredictFn:
    """Class x[0] % 4 with probability 0.7 (0.1 each for the others); unknown when x[0] % 7 == 0."""

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(delay_s)
        x0 = arrays["x"][:, 0].astype(np.int64)
        probs = np.full((len(x0), len(LABELS)), 0.1)
        probs[np.arange(len(x0)), x0 % len(LABELS)] = 0.7
        return {"probs": probs, "unknown": x0 % 7 == 0}

    return predict
