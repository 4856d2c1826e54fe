"""The default results store: one SQLite file, write-ahead log, batched writes.

Readers (the API's threads) never block the writer and see committed batches only (WAL). One
table, one row per flow, with indexes for what the API asks: newest first, by label, by address
or port, by time range, unknown flows; the statistics index covers (time, label, unknown,
packets, bytes) so per-label counts over a time range read the index alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from netmamba.serve.store import (
    FlowPage,
    FlowQuery,
    FlowRecord,
    LabelBucket,
    ResultStore,
    StoreError,
    top_from_json,
    top_to_json,
)

SCHEMA_VERSION = 1
_COLUMNS = (
    "flow_id, source, protocol, src_ip, src_port, dst_ip, dst_port, first_ts, last_ts, packets, "
    "bytes, label, confidence, top, unknown, classified_at, short"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flows (
    flow_id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    protocol INTEGER NOT NULL,
    src_ip TEXT NOT NULL,
    src_port INTEGER NOT NULL,
    dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    top TEXT NOT NULL,
    unknown INTEGER NOT NULL,
    classified_at REAL NOT NULL,
    short INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_by_classified
    ON flows (classified_at, label, unknown, packets, bytes);
CREATE INDEX IF NOT EXISTS flows_by_first ON flows (first_ts, label, unknown, packets, bytes);
CREATE INDEX IF NOT EXISTS flows_by_label ON flows (label, classified_at);
CREATE INDEX IF NOT EXISTS flows_by_src_ip ON flows (src_ip, classified_at);
CREATE INDEX IF NOT EXISTS flows_by_dst_ip ON flows (dst_ip, classified_at);
CREATE INDEX IF NOT EXISTS flows_by_src_port ON flows (src_port, classified_at);
CREATE INDEX IF NOT EXISTS flows_by_dst_port ON flows (dst_port, classified_at);
CREATE INDEX IF NOT EXISTS flows_unknown ON flows (classified_at) WHERE unknown;
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""
_TIME_COLUMN = {"classified": "classified_at", "flow": "first_ts"}


class SQLiteStore(ResultStore):
    """Results in a SQLite file. See the module docstring."""

    backend = "sqlite"

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        if str(path) in ("", ":memory:"):
            raise StoreError("the SQLite store needs a file (readers and writer share it)")
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"{self.path}: folder {self.path.parent} does not exist")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            with self._connect(readonly=False) as db:
                db.executescript(_SCHEMA)
                (version,) = db.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable SQLite results store ({exc})") from exc
        if int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: results store schema {version}, this netmamba writes "
                f"{SCHEMA_VERSION}; use a new file"
            )

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; fine for results
        db.execute("PRAGMA busy_timeout=10000")
        if readonly:
            db.execute("PRAGMA query_only=1")
        return db

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect(readonly=True)
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def _writer_db(self) -> sqlite3.Connection:
        db = getattr(self, "_wdb", None)
        if db is None:
            db = self._wdb = self._connect(readonly=False)
            with self._connections_lock:
                self._connections.append(db)
        return db

    # -- writing ---------------------------------------------------------------------------

    def _write(self, records: list[FlowRecord]) -> None:
        rows = [
            (
                r.flow_id,
                r.source,
                r.protocol,
                r.src_ip,
                r.src_port,
                r.dst_ip,
                r.dst_port,
                r.first_ts,
                r.last_ts,
                r.packets,
                r.bytes,
                r.label,
                r.confidence,
                top_to_json(r.top),
                int(r.unknown),
                r.classified_at,
                int(r.short),
            )
            for r in records
        ]
        db = self._writer_db()
        with db:  # one transaction
            db.executemany(
                f"INSERT OR REPLACE INTO flows ({_COLUMNS}) VALUES ({', '.join('?' * 17)})", rows
            )

    def retain(self, max_age_s: float | None, max_flows: int | None) -> int:
        db = self._writer_db()
        deleted = 0
        with db:
            if max_age_s is not None:
                cursor = db.execute(
                    "DELETE FROM flows WHERE classified_at < ?", (time.time() - max_age_s,)
                )
                deleted += cursor.rowcount
            if max_flows is not None:
                # rowid grows with insertion: keep the newest `max_flows` rows.
                cursor = db.execute(
                    "DELETE FROM flows WHERE rowid <= "
                    "(SELECT rowid FROM flows ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                    (max_flows,),
                )
                deleted += cursor.rowcount
        return deleted

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _where(q: FlowQuery) -> tuple[str, list[Any]]:
        column = _TIME_COLUMN[q.time_field]
        clauses, params = [], []
        if q.label is not None:
            clauses.append("label = ?")
            params.append(q.label)
        if q.address is not None:
            clauses.append("(src_ip = ? OR dst_ip = ?)")
            params += [q.address, q.address]
        if q.port is not None:
            clauses.append("(src_port = ? OR dst_port = ?)")
            params += [q.port, q.port]
        if q.protocol is not None:
            clauses.append("protocol = ?")
            params.append(q.protocol)
        if q.source is not None:
            clauses.append("source = ?")
            params.append(q.source)
        if q.unknown is not None:
            clauses.append("unknown" if q.unknown else "NOT unknown")
        if q.since is not None:
            clauses.append(f"{column} >= ?")
            params.append(q.since)
        if q.until is not None:
            clauses.append(f"{column} < ?")
            params.append(q.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def query(self, q: FlowQuery) -> FlowPage:
        where, params = self._where(q)
        column = _TIME_COLUMN[q.time_field]
        db = self._reader()
        try:
            (total,) = db.execute(f"SELECT COUNT(*) FROM flows{where}", params).fetchone()
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM flows{where} ORDER BY {column} DESC, rowid DESC "
                "LIMIT ? OFFSET ?",
                [*params, q.limit, q.offset],
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: query failed: {exc}") from exc
        return FlowPage(total, [_record(row) for row in rows])

    def stats(
        self,
        since: float,
        until: float,
        bucket_s: float,
        time_field: str = "classified",
    ) -> list[LabelBucket]:
        column = _TIME_COLUMN[time_field]
        try:
            rows = (
                self._reader()
                .execute(
                    # Buckets are aligned on multiples of bucket_s since the epoch, so they stay
                    # put while a dashboard's window slides.
                    f"SELECT CAST({column} / ? AS INTEGER) AS b, label, unknown, COUNT(*), "
                    f"SUM(packets), SUM(bytes) FROM flows WHERE {column} >= ? AND {column} < ? "
                    "GROUP BY b, label, unknown ORDER BY b, label, unknown",
                    (bucket_s, since, until),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: statistics query failed: {exc}") from exc
        return [
            LabelBucket(b * bucket_s, label, bool(unknown), n, packets, nbytes)
            for b, label, unknown, n, packets, nbytes in rows
        ]

    def count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM flows").fetchone()[0]

    def _close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()


def _record(row: tuple[Any, ...]) -> FlowRecord:
    (fid, source, proto, sip, sport, dip, dport, first, last, pkts, nbytes) = row[:11]
    label, confidence, top, unknown, classified_at, short = row[11:]
    return FlowRecord(
        fid,
        source,
        proto,
        sip,
        sport,
        dip,
        dport,
        first,
        last,
        pkts,
        nbytes,
        label,
        confidence,
        top_from_json(top),
        bool(unknown),
        classified_at,
        bool(short),
    )
