"""Dynamic batching of ready flows for a model running in its own worker process.

    producer (service loop)  --slots in shared memory-->  worker process: predict(batch)
            ^                                                   |
            +------- collector thread <--- bounded result queue-+

The input queue is a ring of `capacity` slots in shared memory, one per flow, holding its
feature arrays, id and submit time, so memory is bounded by construction and a flow is copied
once (no pickling per flow). Two pipes carry counts, not data: "k more slots filled" (one
message per group of flows submitted together) and "k slots free again" (one per batch); a
pipe write is a system call, which orders the slot writes before the count on every CPU.

The worker cuts a batch when it holds `max_batch` flows or when the oldest flow has waited
`max_wait_s`: under light load a flow waits at most `max_wait_s`, under heavy load the worker,
busy with the last batch, finds the next one already full. Torch runs in the worker, so
inference never competes for the GIL with packet parsing.

When the ring is full, `submit`/`submit_many` either wait (replays: nothing is lost) or drop
the flows and count them (live capture: the packets keep coming whatever we do). Results come
back through a bounded queue to a collector thread that calls `on_results`; if that falls
behind, the worker waits, the ring fills, and the policy above applies: memory stays bounded
end to end.

The model call is `predict(arrays) -> outputs`: dicts of NumPy arrays with the batch on the
first axis. It is built inside the worker by `predict_factory()`, which must be picklable (a
module-level function or a functools.partial of one), because the worker is a fresh process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing as mp
import multiprocessing.util  # registers its exit handler now, so that ours runs before it
import os
import queue
import select
import signal
import struct
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PredictFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
ArraySpec = Mapping[str, tuple[tuple[int, ...], Any]]  # name -> (shape of one flow, dtype)

_ALIGN = 64


# Workers still running when the interpreter exits (a caller that never closed its batcher):
# they ignore SIGTERM (see _worker_main), which multiprocessing's own exit handler sends before
# waiting for them, so they are killed here first (atexit runs handlers last registered first).
_RUNNING: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _kill_running_workers() -> None:
    for process in list(_RUNNING):
        if process.is_alive():
            process.kill()
            process.join(5)


class BatcherError(RuntimeError):
    """The inference worker failed (its traceback is in the message) or is not running."""


@dataclass
class BatchResult:
    """What the worker returns for one batch."""

    ids: np.ndarray  # int64 (B,): the ids given to submit()
    outputs: dict[str, np.ndarray]  # predict()'s outputs, batch on the first axis
    submitted_at: np.ndarray  # float64 (B,): time.monotonic() at submit
    started_at: float  # when predict() started (monotonic)
    finished_at: float  # when it returned
    received_at: float = 0.0  # when the collector got it

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def latency_s(self) -> float:
        """From the oldest flow's submit to the batch's results being back."""
        return self.received_at - float(self.submitted_at.min())

    @property
    def inference_s(self) -> float:
        return self.finished_at - self.started_at


@dataclass
class BatcherStats:
    submitted: int = 0  # flows accepted into the ring
    dropped: int = 0  # flows refused because the ring was full (drop policy)
    completed: int = 0  # flows whose results came back
    batches: int = 0
    callback_errors: int = 0  # on_results raised (logged)
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))
    batch_latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    worker_cpu_s: float = 0.0  # CPU time of the worker after its model was built (at the end)

    @property
    def in_flight(self) -> int:
        return self.submitted - self.completed


class _Layout:
    """Where each array of each slot lives in the shared buffer."""

    def __init__(self, spec: ArraySpec, capacity: int) -> None:
        self.capacity = capacity
        self.entries: list[tuple[str, tuple[int, ...], np.dtype, int]] = []
        offset = 0
        columns = [(n, tuple(s), np.dtype(d)) for n, (s, d) in spec.items()]
        columns += [("__id", (), np.dtype(np.int64)), ("__t", (), np.dtype(np.float64))]
        for name, shape, dtype in columns:
            self.entries.append((name, shape, dtype, offset))
            size = capacity * math.prod(shape) * dtype.itemsize
            offset += -(-size // _ALIGN) * _ALIGN
        self.nbytes = max(offset, _ALIGN)

    def views(self, buffer: Any) -> dict[str, np.ndarray]:
        return {
            name: np.ndarray((self.capacity, *shape), dtype, buffer=buffer, offset=offset)
            for name, shape, dtype, offset in self.entries
        }


_COUNT = struct.Struct("<I")
_END = 0xFFFFFFFF  # "no more flows": drain what is there and stop


def _read_counts(fd: int) -> list[int]:
    """Counts waiting in a pipe (each message is 4 bytes, written atomically)."""
    data = os.read(fd, 4096)
    if not data:
        return [_END]  # the other end is gone
    return [c for (c,) in _COUNT.iter_unpack(data)]


def _worker_main(
    factory: Callable[[], PredictFn],
    buffer: Any,
    layout: _Layout,
    max_batch: int,
    max_wait_s: float,
    filled_conn: Any,
    free_conn: Any,
    results: Any,
) -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the parent decides when we stop, after
    # it has flushed what it holds, so the worker ignores them and drains until told to end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        predict = factory()
    except BaseException:
        results.put(("error", "building the model failed:\n" + traceback.format_exc()))
        return
    results.put(("ready", None))
    cpu_ready = time.process_time()
    views = layout.views(buffer)
    ids, submitted = views.pop("__id"), views.pop("__t")
    filled_fd, free_fd = filled_conn.fileno(), free_conn.fileno()
    poller = select.poll()
    poller.register(filled_fd, select.POLLIN)
    capacity, tail, available, ending = layout.capacity, 0, 0, False

    def take_counts(timeout_s: float) -> None:
        nonlocal available, ending
        if poller.poll(max(0, int(timeout_s * 1000))):
            for count in _read_counts(filled_fd):
                if count == _END:
                    ending = True
                else:
                    available += count

    while True:
        while not available and not ending:
            take_counts(1.0)
        if not available:
            break  # told to end, and everything was processed
        deadline = submitted[tail % capacity] + max_wait_s
        while available < max_batch and not ending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                take_counts(0)  # only what is already there
                break
            take_counts(remaining)
        n = min(available, max_batch)
        index = (tail + np.arange(n)) % capacity
        batch = {name: view[index] for name, view in views.items()}  # copies out of the ring
        batch_ids, batch_submitted = ids[index], submitted[index]
        tail += n
        available -= n
        os.write(free_fd, _COUNT.pack(n))
        started = time.monotonic()
        try:
            outputs = predict(batch)
            for name, value in outputs.items():
                if len(value) != n:
                    raise ValueError(f"predict() returned {len(value)} rows of {name!r} for {n}")
        except BaseException:
            results.put(("error", f"predict() failed on a batch of {n}:\n{traceback.format_exc()}"))
            return
        finished = time.monotonic()
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        results.put(("batch", batch_ids, outputs, batch_submitted, started, finished))
    results.put(("done", {"cpu_s": time.process_time() - cpu_ready}))


class Batcher:
    """Flows in, batched predictions out, through a worker process. See the module docstring.

    `submit` is called by one producer thread. Results go to `on_results(BatchResult)`, called
    in the collector thread. `close()` waits until every submitted flow has its result.
    """

    def __init__(
        self,
        predict_factory: Callable[[], PredictFn],
        spec: ArraySpec,
        capacity: int = 4096,
        max_batch: int = 256,
        max_wait_s: float = 0.05,
        result_capacity: int = 16,
        on_results: Callable[[BatchResult], None] | None = None,
        drop_when_full: bool = False,
        start_timeout_s: float = 300.0,
    ) -> None:
        if capacity < 1 or max_batch < 1 or result_capacity < 1:
            raise ValueError("capacity, max_batch and result_capacity must be positive")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.spec = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in spec.items()}
        self.capacity, self.max_batch, self.max_wait_s = capacity, max_batch, max_wait_s
        self.drop_when_full = drop_when_full
        self.on_results = on_results
        self.stats = BatcherStats()
        self._factory, self._result_capacity = predict_factory, result_capacity
        self._start_timeout_s = start_timeout_s
        self._layout = _Layout(self.spec, capacity)
        self._ctx = mp.get_context("spawn")  # never fork a process that holds threads
        self._lock = threading.Lock()
        self._head = 0
        self._error: str | None = None
        self._closed = False
        self._process: Any = None
        self._collector: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Batcher:
        """Start the worker and wait until its model is built (BatcherError if that fails)."""
        ctx = self._ctx
        self._buffer = ctx.RawArray("b", self._layout.nbytes)
        views = self._layout.views(self._buffer)
        self._ids, self._submitted = views.pop("__id"), views.pop("__t")
        self._views = views
        filled_r, self._filled = ctx.Pipe(duplex=False)  # producer -> worker: counts
        self._free, free_w = ctx.Pipe(duplex=False)  # worker -> producer: counts
        self._free_slots = self.capacity
        self._free_poll = select.poll()
        self._free_poll.register(self._free.fileno(), select.POLLIN)
        self._results = ctx.Queue(maxsize=self._result_capacity)
        self._process = ctx.Process(
            target=_worker_main,
            args=(
                self._factory,
                self._buffer,
                self._layout,
                self.max_batch,
                self.max_wait_s,
                filled_r,
                free_w,
                self._results,
            ),
            name="netmamba-inference",
            daemon=True,
        )
        self._process.start()
        _RUNNING.add(self._process)
        filled_r.close()  # the worker holds its own copies of these ends
        free_w.close()
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            try:
                kind, payload = self._results.get(timeout=0.2)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    raise BatcherError(
                        f"the inference worker exited (code {self._process.exitcode}) "
                        "before its model was ready"
                    ) from None
                if time.monotonic() > deadline:
                    self._process.kill()
                    raise BatcherError(
                        f"the inference worker was not ready after {self._start_timeout_s:.0f} s"
                    ) from None
        if kind == "error":
            self._process.join(5)
            raise BatcherError(payload)
        self._collector = threading.Thread(
            target=self._collect, name="netmamba-results", daemon=True
        )
        self._collector.start()
        return self

    def __enter__(self) -> Batcher:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive() and self._error is None

    def _check(self) -> None:
        if self._error is not None:
            raise BatcherError(self._error)
        if self._process is None:
            raise BatcherError("the batcher was not started")
        if self._closed:
            raise BatcherError("the batcher is closed")

    def _check_alive(self, gone: bool = False) -> None:
        if not gone and self._process.is_alive():
            return
        # Give the collector a moment to pick up the worker's last words.
        if self._collector is not None:
            self._collector.join(2.0)
        if self._error is not None:
            raise BatcherError(self._error)
        raise BatcherError(f"the inference worker died (exit code {self._process.exitcode})")

    # -- producer side ---------------------------------------------------------------------

    def submit(self, flow_id: int, arrays: Mapping[str, np.ndarray]) -> bool:
        """Queue one flow. False if it was dropped (ring full under the drop policy)."""
        return self.submit_many([(flow_id, arrays)]) == 1

    def submit_many(self, flows: Sequence[tuple[int, Mapping[str, np.ndarray]]]) -> int:
        """Queue flows (id, arrays) in order; returns how many were accepted. Under the drop
        policy those that do not fit are dropped and counted; else this waits for room.

        Flows are written in blocks (one stacked copy per array per block of free slots), so
        the cost per flow is a few array views, not a copy per flow and array."""
        if not flows:
            return 0
        with self._lock:
            self._check()
            self._collect_free(wait=False)
            accepted, n = 0, len(flows)
            while accepted < n:
                if not self._free_slots:
                    if self.drop_when_full:
                        self.stats.dropped += n - accepted
                        break
                    while not self._free_slots:
                        self._collect_free(wait=True)
                count = min(self._free_slots, n - accepted)
                self._write_block(flows[accepted : accepted + count])
                self._signal(count)  # the worker can start on those
                accepted += count
            return accepted

    def _stacked(
        self, flows: Sequence[tuple[int, Mapping[str, np.ndarray]]], name: str, shape: tuple
    ) -> np.ndarray:
        try:
            values = [arrays[name] for _, arrays in flows]
        except KeyError:
            flow_id = next(i for i, a in flows if name not in a)
            raise ValueError(f"flow {flow_id} lacks the array {name!r}") from None
        try:
            stacked = np.stack(values)
        except ValueError:
            stacked = None
        if stacked is None or stacked.shape[1:] != shape:
            for (flow_id, _), value in zip(flows, values, strict=True):
                if np.shape(value) != shape:
                    raise ValueError(
                        f"array {name!r} of flow {flow_id} has shape {np.shape(value)}, "
                        f"expected {shape}"
                    )
        assert stacked is not None
        return stacked

    def _write_block(self, flows: Sequence[tuple[int, Mapping[str, np.ndarray]]]) -> None:
        """Write flows into the next len(flows) free slots (at most two runs: the ring wraps)."""
        n = len(flows)
        stacked = {
            name: self._stacked(flows, name, view.shape[1:]) for name, view in self._views.items()
        }
        ids = np.fromiter((flow_id for flow_id, _ in flows), np.int64, n)
        start = self._head % self.capacity
        first = min(n, self.capacity - start)
        now = time.monotonic()
        for target, values in (
            *((v, stacked[k]) for k, v in self._views.items()),
            (self._ids, ids),
        ):
            target[start : start + first] = values[:first]
            target[: n - first] = values[first:]
        self._submitted[start : start + first] = now
        self._submitted[: n - first] = now
        self._head += n
        self._free_slots -= n
        self.stats.submitted += n

    def _signal(self, count: int) -> None:
        if count:
            os.write(self._filled.fileno(), _COUNT.pack(count))

    def _collect_free(self, wait: bool) -> None:
        """Take the worker's "slots free again" counts; with `wait`, wait up to 0.5 s."""
        if not self._free_poll.poll(500 if wait else 0):
            if wait:
                self._check_alive()
            return
        for count in _read_counts(self._free.fileno()):
            if count == _END:
                self._check_alive(gone=True)
            self._free_slots += count

    # -- consumer side ---------------------------------------------------------------------

    def _collect(self) -> None:
        while True:
            try:
                message = self._results.get(timeout=0.2)
            except queue.Empty:
                if not self._process.is_alive():
                    if self._error is None:
                        self._error = (
                            f"the inference worker died (exit code {self._process.exitcode})"
                        )
                    return
                continue
            kind = message[0]
            if kind == "done":
                self.stats.worker_cpu_s = float(message[1]["cpu_s"])
                return
            if kind == "error":
                self._error = message[1]
                log.error("%s", message[1])
                return
            _, ids, outputs, submitted, started, finished = message
            result = BatchResult(ids, outputs, submitted, started, finished, time.monotonic())
            self.stats.completed += result.size
            self.stats.batches += 1
            self.stats.batch_sizes.append(result.size)
            self.stats.batch_latencies_s.append(result.latency_s)
            if self.on_results is not None:
                try:
                    self.on_results(result)
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception("handling a batch of results failed")

    def close(self, timeout_s: float = 600.0) -> None:
        """Process what was submitted, deliver its results, stop the worker.

        Raises BatcherError if the worker failed (after stopping everything)."""
        if self._process is None or self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._filled.fileno(), _COUNT.pack(_END))
        if self._collector is not None:
            self._collector.join(timeout_s)
            if self._collector.is_alive():
                log.error("inference results still pending after %.0f s; stopping", timeout_s)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        with contextlib.suppress(Exception):
            self._results.close()
            self._results.join_thread()
        if self._error is not None:
            raise BatcherError(self._error)

    def kill(self) -> None:
        """Stop the worker now, dropping what it holds (for errors and tests)."""
        self._closed = True
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
