"""Where the service keeps its results: one interface, SQLite (default) or Redis.

A `FlowRecord` is one classified flow. A store takes records with `add()` (queued and written
in batches by a writer thread, so the service never waits on a disk or a network round trip
per flow), answers `query()` (recent flows, filtered and paged), `stats()` (flows, packets and
bytes per label over time buckets) and `count()`, and applies retention (by age, by count)
every `retention_interval_s` in the writer thread. `flush()` waits until everything added so
far is written; `close()` flushes and stops.

    open_store("results.sqlite")              SQLite, write-ahead log, one file
    open_store("redis://localhost:6379/0")    a Redis server (pip install netmamba[redis])
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TIME_FIELDS = ("classified", "flow")  # classified_at (service clock) or first_ts (capture clock)
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


class StoreError(RuntimeError):
    """The store cannot be opened or queried; the message says which and why."""


@dataclass
class FlowRecord:
    """One classified flow, as stored and as the API returns it."""

    flow_id: str  # unique in the store; adding a record with the same id replaces it
    source: str  # the capture file or interface the flow was seen on
    protocol: int  # IP protocol number (6 TCP, 17 UDP)
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    first_ts: float  # capture time of the first packet, seconds since the epoch
    last_ts: float  # capture time of the last packet counted
    packets: int  # counted when it was classified (a flow classified as soon as it had the
    bytes: int  # packets the model reads may go on: later packets are not added)
    label: str  # the most probable class
    confidence: float  # its probability
    top: list[tuple[str, float]] = field(default_factory=list)  # the 3 best (label, probability)
    unknown: bool = False  # flagged as a class the model was not trained on
    classified_at: float = 0.0  # wall clock when the result was produced
    short: bool = False  # classified at a timeout with fewer packets than the model reads

    def __post_init__(self) -> None:
        self.src_ip = normalise_address(self.src_ip)
        self.dst_ip = normalise_address(self.dst_ip)
        self.top = [(str(label), float(p)) for label, p in self.top]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top"] = [{"label": label, "probability": p} for label, p in self.top]
        data["protocol_name"] = PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowRecord:
        data = dict(data)
        data.pop("protocol_name", None)
        data["top"] = [
            (t["label"], t["probability"]) if isinstance(t, dict) else tuple(t)
            for t in data.get("top", [])
        ]
        return cls(**data)


@functools.lru_cache(maxsize=65536)  # addresses repeat: parsing each one costs microseconds
def normalise_address(address: str) -> str:
    """The canonical text of an IP address (IPv6 compressed), or the text unchanged if not one."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


@dataclass
class FlowQuery:
    """Filters and paging for `ResultStore.query`; None means "any"."""

    label: str | None = None
    address: str | None = None  # source or destination
    port: int | None = None  # source or destination
    protocol: int | None = None
    source: str | None = None
    unknown: bool | None = None
    since: float | None = None  # inclusive, seconds since the epoch, on `time_field`
    until: float | None = None  # exclusive
    time_field: str = "classified"
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.time_field not in TIME_FIELDS:
            raise ValueError(f"time_field must be one of {', '.join(TIME_FIELDS)}")
        if self.limit < 0 or self.offset < 0:
            raise ValueError("limit and offset must be >= 0")
        if self.address is not None:
            self.address = normalise_address(self.address)


@dataclass
class FlowPage:
    total: int  # flows matching the filters
    flows: list[FlowRecord]  # newest first, `limit` at most, from `offset`


@dataclass
class LabelBucket:
    """Flows of one label (and unknown flag) classified in one time bucket."""

    bucket: float  # start of the bucket, seconds since the epoch
    label: str
    unknown: bool
    flows: int
    packets: int
    bytes: int


class ResultStore(ABC):
    """Batched writer thread + the queries every backend answers. See the module docstring."""

    backend = "?"

    def __init__(
        self,
        max_pending: int = 100_000,
        write_batch: int = 1000,
        write_interval_s: float = 0.2,
        max_age_s: float | None = None,
        max_flows: int | None = None,
        retention_interval_s: float = 10.0,
    ) -> None:
        self.max_pending, self.write_batch = max_pending, write_batch
        self.write_interval_s = write_interval_s
        self.max_age_s, self.max_flows = max_age_s, max_flows
        self.retention_interval_s = retention_interval_s
        self.rows_written = 0
        self.rows_deleted = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._pending: deque[FlowRecord] = deque()
        self._cond = threading.Condition()
        self._in_progress = 0  # taken by the writer, not yet committed
        self._closing = False
        self._writer: threading.Thread | None = None

    def start(self) -> ResultStore:
        self._writer = threading.Thread(target=self._write_loop, name="netmamba-store", daemon=True)
        self._writer.start()
        return self

    # -- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records added but not yet written."""
        return len(self._pending) + self._in_progress

    def add(self, records: Iterable[FlowRecord], timeout_s: float | None = None) -> None:
        """Queue records for writing; waits while `max_pending` are already queued."""
        records = list(records)
        if not records:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            if self._closing:
                raise StoreError("the results store is closed")
            while len(self._pending) >= self.max_pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StoreError("the results store is not keeping up (write queue full)")
                self._cond.wait(remaining if remaining is not None else 1.0)
            self._pending.extend(records)
            self._cond.notify_all()

    def flush(self, timeout_s: float | None = 60.0) -> bool:
        """Wait until everything added so far is written; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._in_progress:
                if self._writer is None or not self._writer.is_alive():
                    self._write_now()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def _take(self) -> list[FlowRecord]:
        batch = []
        while self._pending and len(batch) < self.write_batch:
            batch.append(self._pending.popleft())
        self._in_progress = len(batch)
        self._cond.notify_all()
        return batch

    def _write_now(self) -> None:
        """Write synchronously (no writer thread); called with the condition held."""
        batch = self._take()
        try:
            self._write_safely(batch)
        finally:
            self._in_progress = 0

    def _write_safely(self, batch: list[FlowRecord]) -> None:
        try:
            self._write(batch)
            self.rows_written += len(batch)
        except Exception as exc:
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "could not write %d results to the %s store: %s", len(batch), self.backend, exc
            )

    def _write_loop(self) -> None:
        next_retention = time.monotonic() + self.retention_interval_s
        while True:
            with self._cond:
                # Wait for a full batch or the interval: a trickle becomes one transaction.
                self._cond.wait_for(
                    lambda: len(self._pending) >= self.write_batch or self._closing,
                    self.write_interval_s,
                )
                if self._closing and not self._pending:
                    return
                batch = self._take()
            if batch:
                self._write_safely(batch)
            with self._cond:
                self._in_progress = 0
                self._cond.notify_all()
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self.retention_interval_s
                self.apply_retention()

    def apply_retention(self) -> int:
        """Delete by age and count as configured; returns how many flows went."""
        if self.max_age_s is None and self.max_flows is None:
            return 0
        try:
            deleted = self.retain(self.max_age_s, self.max_flows)
        except Exception as exc:
            log.error("retention on the %s store failed: %s", self.backend, exc)
            return 0
        self.rows_deleted += deleted
        if deleted:
            log.debug("retention removed %d flows", deleted)
        return deleted

    def close(self) -> None:
        """Write what is pending, stop the writer, release connections."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        with self._cond:
            while self._pending:
                self._write_now()
        self._close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each backend implements ---------------------------------------------------------

    @abstractmethod
    def _write(self, records: list[FlowRecord]) -> None:
        """Insert or replace (by flow_id) records, in one transaction."""

    @abstractmethod
    def query(self, q: FlowQuery) -> FlowPage:
        """Flows matching the filters, newest first by `q.time_field`, paged."""

    @abstractmethod
    def stats(
        self,
        since: float,
        until: float,
        bucket_s: float,
        time_field: str = "classified",
    ) -> list[LabelBucket]:
        """Flows, packets and bytes per (bucket, label, unknown) with since <= t < until.

        Buckets start at multiples of `bucket_s` since the epoch (a backend may round
        `bucket_s` up to its resolution: `bucket` of the rows says where each starts)."""

    def stats_resolution(self, bucket_s: float) -> float:
        """The bucket width `stats` really uses when asked for `bucket_s`."""
        return bucket_s

    @abstractmethod
    def count(self) -> int:
        """Flows in the store."""

    @abstractmethod
    def retain(self, max_age_s: float | None, max_flows: int | None) -> int:
        """Delete flows classified more than `max_age_s` ago and the oldest beyond `max_flows`."""

    @abstractmethod
    def _close(self) -> None:
        """Release connections."""

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "pending": self.pending,
            "rows_written": self.rows_written,
            "rows_deleted": self.rows_deleted,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }


@functools.lru_cache(maxsize=4096)
def _json_string(text: str) -> str:
    return json.dumps(text)


def top_to_json(top: list[tuple[str, float]]) -> str:
    """[[label, p], ...] as compact JSON, p rounded to 6 digits: the text json.dumps gives,
    in half its time (a label's quoting is looked up, a float's repr is JSON's)."""
    parts = []
    for label, p in top:
        p = round(p, 6)
        if not math.isfinite(p):
            return json.dumps([[lb, round(q, 6)] for lb, q in top], separators=(",", ":"))
        parts.append(f"[{_json_string(label)},{p!r}]")
    return "[" + ",".join(parts) + "]"


def top_from_json(text: str) -> list[tuple[str, float]]:
    return [(label, float(p)) for label, p in json.loads(text)]


def open_store(target: str, **options: Any) -> ResultStore:
    """A started store: SQLite for a path or sqlite:///path, Redis for redis:// or rediss://."""
    if target.startswith(("redis://", "rediss://", "unix://")):
        from netmamba.serve.redis_store import RedisStore

        return RedisStore(target, **options).start()
    from netmamba.serve.sqlite_store import SQLiteStore

    return SQLiteStore(target.removeprefix("sqlite://"), **options).start()
