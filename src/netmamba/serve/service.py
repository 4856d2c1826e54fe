"""`netmamba serve`: packets -> flow table -> batched inference -> results store -> HTTP API.

    source (live capture / replay)           main thread: read packets, update the flow table,
        -> FlowTable.add / expire / flush     hand ready flows to the batcher
        -> Batcher (worker process)          dynamic batches, the model
        -> collector thread                  results -> FlowRecords -> store (writer thread)
    HTTP server (uvicorn, its own thread)    API + dashboard over the store and the metrics

The pieces it connects are small interfaces, so any flow meter or model plugs in:

- a `PacketSource` yields lists of `(ts_ns, frame, linktype)` packets, an empty list when a
  quiet interval passed, and tells the time in capture time (`now_ns`);
- a `FlowTable` takes those packets and returns `ReadyFlow`s: as soon as a flow has the packets
  the model reads, at an idle/active timeout with what it has (`short`), and at the end;
- a `ModelSpec` names the model, its labels, the arrays of a flow (shapes, dtypes) and a
  picklable factory of `predict(arrays) -> {"probs": (B, C), "unknown": (B,) optional}`.

Shutdown (SIGINT/SIGTERM, or the end of a replay): stop reading, flush the flow table, wait for
every queued flow's result, write everything, then stop; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from netmamba.config import Config, ConfigError
from netmamba.serve.batcher import ArraySpec, Batcher, BatchResult, PredictFn
from netmamba.serve.metrics import ServiceMetrics
from netmamba.serve.store import FlowRecord, ResultStore, open_store

log = logging.getLogger("netmamba.serve")

TOP_K = 3


class ServeError(RuntimeError):
    """The service cannot start (port taken, model missing, ...); the message says why."""


@dataclass
class ServeConfig(Config):
    """Settings of `netmamba serve` (the capture and the flow table have their own)."""

    max_batch: int = 256  # flows per inference batch at most
    max_wait_ms: float = 50.0  # a flow waits at most this long for others to fill a batch
    queue_flows: int = 4096  # ready flows waiting for inference, at most (then: overload)
    result_batches: int = 16  # finished batches waiting to be stored, at most
    overload: str = "auto"  # full queue: "drop" (count), "block" (wait); auto: drop if live
    store: str = "netmamba-results.sqlite"  # SQLite file, or redis://host:port/db
    max_age_s: float | None = 7 * 86400.0  # retention: delete results older than this
    max_flows: int | None = 1_000_000  # retention: keep at most this many results
    host: str = "127.0.0.1"  # HTTP address ("0.0.0.0": every interface)
    port: int = 8000  # HTTP port (0: any free port)
    http: bool = True  # serve the API and dashboard
    keep_serving: bool = True  # after a replay ends, keep the API up until Ctrl-C
    expire_interval_s: float = 1.0  # how often timeouts of the flow table are checked
    log_interval_s: float = 10.0  # how often a status line is logged (0: never)

    def __post_init__(self) -> None:
        if self.overload not in ("auto", "drop", "block"):
            raise ConfigError(
                f"ServeConfig.overload must be auto, drop or block: {self.overload!r}"
            )
        for name in ("max_batch", "queue_flows", "result_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ServeConfig.{name} must be >= 1")
        if self.max_wait_ms < 0:
            raise ConfigError("ServeConfig.max_wait_ms must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"ServeConfig.port must be 0-65535, not {self.port}")


# -- the interfaces the service connects -----------------------------------------------------


@dataclass
class ReadyFlow:
    """A flow the flow table hands over for classification."""

    protocol: int  # IP protocol number
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    first_ts_ns: int  # capture time of its first packet
    last_ts_ns: int  # ... and of the last one counted
    packets: int
    bytes: int
    arrays: dict[str, np.ndarray]  # the model's input arrays of this flow (ModelSpec.arrays)
    short: bool = False  # fewer packets than the model reads (timeout or end)
    source: str | None = None  # the capture or interface it came from (None: the source's name)


@dataclass
class NextCapture:
    """Yielded by a source that reads several captures in turn, before each one's packets: the
    flows of the capture before end here (each capture is metered on its own, as `classify`
    does), and the packets that follow are `name`'s."""

    name: str


class PacketSource(Protocol):
    name: str  # interface or capture, stored with each result
    live: bool  # packets keep coming whatever we do (drop on overload) or wait for us

    def batches(self) -> Iterator[list[Any]]: ...

    def now_ns(self) -> int: ...

    def kernel_stats(self) -> tuple[int, int] | None: ...  # (received, dropped) or None

    def close(self) -> None: ...


class FlowTable(Protocol):
    """Packets in, ReadyFlows out. Optional: `flows_too_short` and `flows_other_protocol`
    (flows not classified because the model was never trained on flows that short or of that
    protocol) and `next_capture(name)`, called on a
    NextCapture from the source, returning the flows that end with the capture before."""

    flows_seen: int  # flows started
    flows_evicted: int  # flows pushed out of a full table before being classified
    active_flows: int  # flows held now

    def add(self, packets: Any) -> list[ReadyFlow]: ...

    def expire(self, now_ns: int) -> list[ReadyFlow]: ...

    def flush(self) -> list[ReadyFlow]: ...


@dataclass
class ModelSpec:
    """What the service needs to know about the model."""

    name: str
    labels: list[str]
    arrays: ArraySpec  # name -> (shape of one flow, dtype)
    predict_factory: Callable[[], PredictFn]  # picklable; called in the worker process


# -- sources ----------------------------------------------------------------------------------


MAX_WIRE_LEN = 262144  # a longer "original length" in a capture record is corrupt


def count_batch(batch: Any) -> tuple[int, int]:
    """(packets, bytes) of a batch: a list of (ts_ns, frame, linktype), or a parsed
    PacketBatch of netmamba.capture (wire lengths, which a snap length does not cut; a
    nonsense wire length of a damaged record counts as its captured length)."""
    records = getattr(batch, "packets", None)
    if records is not None and hasattr(records, "dtype"):
        wire = records["wirelen"]
        if wire.size and int(wire.max()) > MAX_WIRE_LEN:
            wire = np.where(wire > MAX_WIRE_LEN, records["caplen"], wire)
        return len(records), int(wire.sum(dtype=np.int64))
    return len(batch), sum(len(p[1]) for p in batch)


class LiveSource:
    """A `netmamba.capture.live.LiveCapture` as a PacketSource."""

    live = True

    def __init__(self, capture: Any) -> None:
        self.capture, self.name = capture, capture.interface

    def batches(self) -> Iterator[list[Any]]:
        return self.capture.batches()

    def now_ns(self) -> int:
        return time.time_ns()  # kernel timestamps are the system clock

    def kernel_stats(self) -> tuple[int, int]:
        stats = self.capture.stats()
        return stats.received, stats.dropped

    def close(self) -> None:
        self.capture.close()


class ReplaySource:
    """A `netmamba.serve.replay.Replay` as a PacketSource."""

    live = False

    def __init__(self, replay: Any, name: str) -> None:
        self.replay, self.name = replay, name

    def batches(self) -> Iterator[list[Any]]:
        return self.replay.batches()

    def now_ns(self) -> int:
        return self.replay.now_ns()

    def kernel_stats(self) -> None:
        return None

    def close(self) -> None:
        close = getattr(self.replay.packets, "close", None)
        if close is not None:
            close()


# -- the HTTP server ----------------------------------------------------------------------------


class HttpServer:
    """uvicorn in a thread, on a socket we bind ourselves (clear errors, port 0 = any free)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ServeError(
                f"cannot serve HTTP on {host}:{port}: {exc.strerror}"
                + (" (another process uses this port: pick one with --port)" if port else "")
            ) from exc
        self.sock.listen(128)
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="netmamba-http"
        )
        self.thread.daemon = True

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 30.0) -> HttpServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the service ----------------------------------------------------------------------------------


class _Interrupted(Exception):
    """Raised by the signal handler to leave a blocking read of a replay source."""


@dataclass
class ServiceSummary:
    seconds: float
    packets: int
    bytes: int
    flows_seen: int
    flows_classified: int
    flows_dropped: int
    flows_evicted: int
    flows_too_short: int  # not classified: shorter than the model's training flows
    flows_other_protocol: int  # not classified: a protocol the model's training data left out
    flows_lost: int  # handed to inference but never stored (must be 0)
    kernel_dropped: int
    batch_latencies_s: list[float] = field(default_factory=list)
    worker_cpu_s: float = 0.0  # CPU time the inference worker used after loading the model

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def flows_per_s(self) -> float:
        return self.flows_classified / self.seconds if self.seconds else 0.0


class Service:
    """One running `netmamba serve`. `run()` blocks until the source ends or a stop request."""

    def __init__(
        self,
        config: ServeConfig,
        source: PacketSource,
        table: FlowTable,
        model: ModelSpec,
        store: ResultStore | None = None,
    ) -> None:
        self.config, self.source, self.table, self.model = config, source, table, model
        self.metrics = ServiceMetrics()
        self._own_store = store is None
        self.store = store if store is not None else self._open_store()
        drop = config.overload == "drop" or (config.overload == "auto" and source.live)
        self.batcher = Batcher(
            model.predict_factory,
            model.arrays,
            capacity=config.queue_flows,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000,
            result_capacity=config.result_batches,
            on_results=self._on_results,
            drop_when_full=drop,
        )
        self.http: HttpServer | None = None
        self._pending: dict[int, ReadyFlow] = {}  # queued for inference, by flow id
        self._ids = itertools.count(1)
        self._run_id = f"{int(time.time() * 1000):x}"
        self._stop = threading.Event()
        self._done = threading.Event()
        self._in_source = False
        self._signals = 0
        self._peak_in_flight = 0
        self._lost = 0
        self._labels = np.array(model.labels, dtype=object)
        self._add_gauges()

    def _open_store(self) -> ResultStore:
        c = self.config
        try:
            return open_store(c.store, max_age_s=c.max_age_s, max_flows=c.max_flows)
        except Exception as exc:
            raise ServeError(f"results store {c.store}: {exc}") from exc

    def _add_gauges(self) -> None:
        m = self.metrics
        m.add_gauge("netmamba_queue_flows", "Flows waiting for inference.", self._in_flight)
        m.add_gauge(
            "netmamba_queue_capacity_flows", "Inference queue size.", lambda: self.batcher.capacity
        )
        m.add_gauge(
            "netmamba_active_flows",
            "Flows held by the flow table.",
            lambda: self.table.active_flows,
        )
        m.add_gauge(
            "netmamba_store_pending_rows",
            "Results waiting to be written.",
            lambda: self.store.pending,
        )
        m.add_gauge(
            "netmamba_info",
            "The model and source of this service.",
            lambda: 1,
            {"model": self.model.name, "source": self.source.name, "store": self.store.backend},
        )

    def _in_flight(self) -> int:
        return self.batcher.stats.in_flight

    def status(self) -> dict[str, Any]:
        """What /api/health shows about the service."""
        problems = []
        if self.batcher._process is not None and not self.batcher.alive and not self._done.is_set():
            problems.append(f"inference worker: {self.batcher._error or 'not running'}")
        return {
            "model": self.model.name,
            "labels": len(self.model.labels),
            "source": self.source.name,
            "live": self.source.live,
            "state": "done"
            if self._done.is_set()
            else "stopping"
            if self._stop.is_set()
            else "running",
            "queue": {"flows": self._in_flight(), "capacity": self.batcher.capacity},
            "active_flows": self.table.active_flows,
            "problems": problems,
        }

    def create_app(self) -> Any:
        from netmamba.serve.api import create_app

        return create_app(self.store, self.metrics, self.status)

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to finish (thread-safe; what is queued is still classified)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        log.info(
            "%s: finishing (classifying what is queued; again to stop at once)",
            signal.Signals(signum).name,
        )
        self._stop.set()
        if self._in_source and not self.source.live:
            raise _Interrupted  # leave a blocking read (standard input)

    # -- the pipeline -------------------------------------------------------------------------

    def _submit(self, flows: list[ReadyFlow]) -> None:
        if not flows:
            return
        items = []
        for flow in flows:
            flow_id = next(self._ids)
            self._pending[flow_id] = flow  # before submit: its result may come back at once
            items.append((flow_id, flow.arrays))
        accepted = self.batcher.submit_many(items)
        for flow_id, _ in items[accepted:]:  # dropped (inference full): the tail of the list
            del self._pending[flow_id]
        if accepted < len(items):
            self.metrics.flows_dropped.inc(len(items) - accepted)
        for flow in flows[:accepted]:
            flow.arrays = {}  # copied into the ring: only the description stays
        self._peak_in_flight = max(self._peak_in_flight, self._in_flight())

    def _on_results(self, result: BatchResult) -> None:
        """In the collector thread: a batch of predictions -> records -> the store."""
        probs = np.asarray(result.outputs["probs"], dtype=np.float64)
        unknown = result.outputs.get("unknown")
        unknown = np.zeros(len(probs), bool) if unknown is None else np.asarray(unknown, bool)
        k = min(TOP_K, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (B, k)
        top_p = np.take_along_axis(probs, top, axis=1)
        top_labels = self._labels[top]
        now = time.time()
        records = []
        for row, flow_id in enumerate(result.ids.tolist()):
            f = self._pending.pop(flow_id, None)
            if f is None:
                self._lost += 1
                continue
            records.append(
                FlowRecord(
                    flow_id=f"{self._run_id}-{flow_id}",
                    source=f.source or self.source.name,
                    protocol=f.protocol,
                    src_ip=f.src_ip,
                    src_port=f.src_port,
                    dst_ip=f.dst_ip,
                    dst_port=f.dst_port,
                    first_ts=f.first_ts_ns / 1e9,
                    last_ts=f.last_ts_ns / 1e9,
                    packets=f.packets,
                    bytes=f.bytes,
                    label=str(top_labels[row, 0]),
                    confidence=float(top_p[row, 0]),
                    top=list(zip(top_labels[row].tolist(), top_p[row].tolist(), strict=True)),
                    unknown=bool(unknown[row]),
                    classified_at=now,
                    short=f.short,
                )
            )
        m = self.metrics
        m.flows_classified.inc(len(records))
        m.flows_unknown.inc(int(sum(r.unknown for r in records)))
        m.flows_short.inc(sum(r.short for r in records))
        m.batch_size.observe(result.size)
        m.batch_latency.observe(result.latency_s)
        m.inference.observe(result.inference_s)
        m.flow_latency.observe_many(result.received_at - result.submitted_at)
        self.store.add(records)

    def _update_counters(self) -> None:
        m = self.metrics
        m.flows_seen.set_total(self.table.flows_seen)
        m.flows_evicted.set_total(self.table.flows_evicted)
        m.flows_too_short.set_total(getattr(self.table, "flows_too_short", 0))
        m.flows_other_protocol.set_total(getattr(self.table, "flows_other_protocol", 0))
        kernel = self.source.kernel_stats()
        if kernel is not None:
            m.kernel_received.set_total(kernel[0])
            m.kernel_dropped.set_total(kernel[1])
        m.store_errors.set_total(self.store.write_errors)

    def _log_status(self) -> None:
        c, r = self.metrics.counters(), self.metrics.rates()
        log.info(
            "%s: %s pkt/s, %.1f Mb/s; flows: %s classified (%s/s), %s dropped, %s evicted; "
            "queue %d/%d; store pending %d",
            self.source.name,
            f"{r['packets_per_s']:,.0f}",
            r["mbps"],
            f"{c['flows_classified']:,}",
            f"{r['flows_per_s']:,.0f}",
            f"{c['flows_dropped']:,}",
            f"{c['flows_evicted']:,}",
            self._in_flight(),
            self.batcher.capacity,
            self.store.pending,
        )

    def _read_loop(self) -> None:
        c, m = self.config, self.metrics
        next_expire = time.monotonic()
        next_log = next_expire + c.log_interval_s
        batches = iter(self.source.batches())
        while not self._stop.is_set():
            self._in_source = True
            try:
                batch = next(batches)
            except (StopIteration, _Interrupted):
                break
            finally:
                self._in_source = False
            if isinstance(batch, NextCapture):
                next_capture = getattr(self.table, "next_capture", None)
                if next_capture is not None:
                    self._submit(next_capture(batch.name))
                continue
            if len(batch):
                packets, nbytes = count_batch(batch)
                m.packets.inc(packets)
                m.bytes.inc(nbytes)
                self._submit(self.table.add(batch))
            now = time.monotonic()
            if now >= next_expire:
                next_expire = now + c.expire_interval_s
                self._submit(self.table.expire(self.source.now_ns()))
                self._update_counters()
            if c.log_interval_s and now >= next_log:
                self._log_status()
                next_log = now + c.log_interval_s

    def start(self) -> Service:
        """Start the worker (builds the model) and the HTTP server."""
        started = time.monotonic()
        try:
            self.batcher.start()
        except Exception as exc:
            raise ServeError(f"the model {self.model.name} could not start: {exc}") from exc
        log.info(
            "model %s (%d labels) ready in %.1f s; batches of up to %d flows or %g ms",
            self.model.name,
            len(self.model.labels),
            time.monotonic() - started,
            self.config.max_batch,
            self.config.max_wait_ms,
        )
        if self.config.http:
            try:
                self.http = HttpServer(self.create_app(), self.config.host, self.config.port)
                self.http.start()
            except BaseException:
                self.batcher.kill()  # nothing was submitted: no results to wait for
                if self._own_store:
                    self.store.close()
                raise
            log.info(
                "dashboard at %s (API: %sapi/flows, metrics: %smetrics)",
                self.http.url,
                self.http.url,
                self.http.url,
            )
        self.metrics.start_sampler()
        return self

    def run(self, install_signals: bool = True) -> ServiceSummary:
        """Serve until the source ends or stop(); then drain everything and return figures."""
        if self.batcher._process is None:
            self.start()
        handlers = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        started = time.monotonic()
        try:
            log.info("reading %s", self.source.name)
            self._read_loop()
            self.source.close()
            self._submit(self.table.flush())
            self._update_counters()
            self.batcher.close()  # every queued flow's result is in the store's queue now
            self.store.flush(None)
            elapsed = time.monotonic() - started  # from the first packet to the last result stored
            self._done.set()
            self.metrics.sample()
            summary = self._summary(elapsed)
            log.info(
                "done: %s packets (%.1f Mb/s) in %.1f s, %s flows classified, %s dropped, "
                "%s evicted, %s too short to classify, %s of other protocols",
                f"{summary.packets:,}",
                summary.mbps,
                summary.seconds,
                f"{summary.flows_classified:,}",
                f"{summary.flows_dropped:,}",
                f"{summary.flows_evicted:,}",
                f"{summary.flows_too_short:,}",
                f"{summary.flows_other_protocol:,}",
            )
            if self.http is not None and self.config.keep_serving and not self._stop.is_set():
                log.info("still serving the results at %s; Ctrl-C to quit", self.http.url)
                while not self._stop.wait(0.5):
                    pass
            return summary
        finally:
            self._shutdown()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _summary(self, elapsed: float) -> ServiceSummary:
        c = self.metrics.counters()
        return ServiceSummary(
            seconds=elapsed,
            packets=c["packets"],
            bytes=c["bytes"],
            flows_seen=c["flows_seen"],
            flows_classified=c["flows_classified"],
            flows_dropped=c["flows_dropped"],
            flows_evicted=c["flows_evicted"],
            flows_too_short=c["flows_too_short"],
            flows_other_protocol=c["flows_other_protocol"],
            flows_lost=self._lost + len(self._pending),
            kernel_dropped=c["kernel_dropped"],
            batch_latencies_s=list(self.batcher.stats.batch_latencies_s),
            worker_cpu_s=self.batcher.stats.worker_cpu_s,
        )

    @property
    def peak_in_flight(self) -> int:
        return self._peak_in_flight

    def _shutdown(self) -> None:
        self._done.set()
        self.metrics.stop_sampler()
        with contextlib.suppress(Exception):
            self.source.close()
        if self.batcher._process is not None and self.batcher._process.is_alive():
            self.batcher.kill()
        if self.http is not None:
            self.http.stop()
        if self._own_store:
            self.store.close()
