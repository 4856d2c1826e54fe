"""The service's counters, gauges and histograms, in Prometheus text format, plus recent rates.

`ServiceMetrics` holds what /metrics exports (packets, bytes, flows seen / classified / dropped /
evicted, kernel drops, batch sizes and latencies, queue depths) and a one-second history of
throughput (packets/s, Mb/s, flows/s) that the dashboard draws. Counters are updated by the
service loop and the result collector, once per batch of packets or flows, never per packet.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    if isinstance(value, int | np.integer):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (
        (k, str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"'))
        for k, v in labels.items()
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A total that only goes up (exported as <name>, which should end in _total)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self.value = 0

    def inc(self, amount: int | float = 1) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot go down")
        with self._lock:
            self.value += amount

    def set_total(self, value: int | float) -> None:
        """For totals counted elsewhere (the kernel's): never lower than before."""
        with self._lock:
            self.value = max(self.value, value)

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_number(self.value)}"]


class Gauge(_Metric):
    """A value that goes up and down, set directly or read from a function at export."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, help_text)
        self.value: float = 0
        self.read, self.labels = read, labels or {}

    def set(self, value: float) -> None:
        self.value = value

    def get(self) -> float:
        if self.read is not None:
            try:
                return self.read()
            except Exception:
                return math.nan
        return self.value

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name}{_labels(self.labels)} {_number(self.get())}"]


class Histogram(_Metric):
    """Observations counted in cumulative buckets (le = upper bound), with their sum."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help_text)
        self.bounds = np.array(sorted(buckets), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def observe_many(self, values: Iterable[float] | np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if not values.size:
            return
        # side="left": a value equal to a bound counts in that bound's bucket (le is <=).
        where = np.searchsorted(self.bounds, values, side="left")
        with self._lock:
            np.add.at(self.counts, where, 1)
            self.sum += float(values.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def render(self) -> list[str]:
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total, value_sum = int(cumulative[-1]), self.sum
        lines = self.header()
        for bound, n in zip(self.bounds, cumulative[:-1], strict=True):
            lines.append(f'{self.name}_bucket{{le="{_number(float(bound))}"}} {int(n)}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {total}')
        lines.append(f"{self.name}_sum {_number(value_sum)}")
        lines.append(f"{self.name}_count {total}")
        return lines


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """Everything /metrics exports, and the throughput history of the dashboard."""

    def __init__(self, history_s: int = 3600) -> None:
        self.started_at = time.time()
        c, h = Counter, Histogram
        self.packets = c("netmamba_packets_total", "Packets read from the source.")
        self.bytes = c("netmamba_bytes_total", "Bytes of the packets read (captured frame bytes).")
        self.flows_seen = c("netmamba_flows_seen_total", "Flows the flow table started.")
        self.flows_classified = c("netmamba_flows_classified_total", "Flows classified.")
        self.flows_short = c(
            "netmamba_flows_short_total",
            "Flows classified at a timeout with fewer packets than the model reads.",
        )
        self.flows_unknown = c(
            "netmamba_flows_unknown_total", "Flows flagged as a class the model does not know."
        )
        self.flows_dropped = c(
            "netmamba_flows_dropped_total", "Ready flows dropped because inference was full."
        )
        self.flows_evicted = c(
            "netmamba_flows_evicted_total",
            "Flows pushed out of a full flow table before they had every packet the model reads "
            "(classified with what they had).",
        )
        self.flows_too_short = c(
            "netmamba_flows_too_short_total",
            "Flows with fewer packets than the model's training flows: not classified.",
        )
        self.flows_other_protocol = c(
            "netmamba_flows_other_protocol_total",
            "Flows of protocols the model's training data left out: not classified.",
        )
        self.kernel_received = c(
            "netmamba_capture_kernel_packets_total", "Packets the kernel passed to the capture."
        )
        self.kernel_dropped = c(
            "netmamba_capture_kernel_drops_total", "Packets the kernel dropped (capture full)."
        )
        self.store_errors = c("netmamba_store_write_errors_total", "Failed result writes.")
        self.batch_size = h("netmamba_batch_size", "Flows per inference batch.", BATCH_BUCKETS)
        self.batch_latency = h(
            "netmamba_batch_latency_seconds",
            "From the oldest flow of a batch entering the queue to its results.",
            LATENCY_BUCKETS,
        )
        self.inference = h("netmamba_inference_seconds", "Model time per batch.", LATENCY_BUCKETS)
        self.flow_latency = h(
            "netmamba_flow_latency_seconds",
            "From a flow being ready to its result (queue wait + inference).",
            LATENCY_BUCKETS,
        )
        self.gauges: list[Gauge] = [
            Gauge("netmamba_uptime_seconds", "Seconds since the service started.", self.uptime_s)
        ]
        self._history: deque[tuple[float, int, int, int]] = deque(maxlen=history_s + 1)
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def add_gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float],
        labels: dict[str, str] | None = None,
    ) -> Gauge:
        gauge = Gauge(name, help_text, read, labels)
        self.gauges.append(gauge)
        return gauge

    def uptime_s(self) -> float:
        return time.time() - self.started_at

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)] + self.gauges

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for metric in self.all():
            lines += metric.render()
        return "\n".join(lines) + "\n"

    def counters(self) -> dict[str, int]:
        return {
            "packets": self.packets.value,
            "bytes": self.bytes.value,
            "flows_seen": self.flows_seen.value,
            "flows_classified": self.flows_classified.value,
            "flows_short": self.flows_short.value,
            "flows_unknown": self.flows_unknown.value,
            "flows_dropped": self.flows_dropped.value,
            "flows_evicted": self.flows_evicted.value,
            "flows_too_short": self.flows_too_short.value,
            "flows_other_protocol": self.flows_other_protocol.value,
            "kernel_dropped": self.kernel_dropped.value,
        }

    # -- throughput history -------------------------------------------------------------------

    def sample(self, now: float | None = None) -> None:
        """Record the counters now (the sampler thread does it every second)."""
        now = time.time() if now is None else now
        self._history.append(
            (now, self.packets.value, self.bytes.value, self.flows_classified.value)
        )

    def start_sampler(self, interval_s: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval_s):
                self.sample()

        self.sample()
        self._sampler = threading.Thread(target=run, name="netmamba-metrics", daemon=True)
        self._sampler.start()

    def stop_sampler(self) -> None:
        self._stop.set()

    def throughput(self, seconds: float = 300) -> list[dict[str, float]]:
        """Rates between consecutive samples of the last `seconds`, oldest first."""
        history = list(self._history)
        if not history:
            return []
        cutoff = history[-1][0] - seconds
        history = [h for h in history if h[0] >= cutoff]
        out = []
        for (t0, p0, b0, f0), (t1, p1, b1, f1) in itertools.pairwise(history):
            dt = t1 - t0
            if dt <= 0:
                continue
            out.append(
                {
                    "t": t1,
                    "packets_per_s": (p1 - p0) / dt,
                    "mbps": (b1 - b0) * 8 / dt / 1e6,
                    "flows_per_s": (f1 - f0) / dt,
                }
            )
        return out

    def rates(self, window_s: float = 5.0) -> dict[str, float]:
        """Average rates over the last `window_s` seconds of samples."""
        history = list(self._history)
        if len(history) < 2:
            return {"packets_per_s": 0.0, "mbps": 0.0, "flows_per_s": 0.0}
        last = history[-1]
        first = next((h for h in history if h[0] >= last[0] - window_s), history[-2])
        if first is last:
            first = history[-2]
        dt = last[0] - first[0] or 1.0
        return {
            "packets_per_s": (last[1] - first[1]) / dt,
            "mbps": (last[2] - first[2]) * 8 / dt / 1e6,
            "flows_per_s": (last[3] - first[3]) / dt,
        }

    def summary(self) -> dict[str, Any]:
        return {"counters": self.counters(), "rates": self.rates(), "uptime_s": self.uptime_s()}
