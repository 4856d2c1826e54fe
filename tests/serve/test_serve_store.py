"""The results store: the same behaviour from SQLite and from a real Redis server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from servehelpers import record

from netmamba.serve.sqlite_store import SQLiteStore
from netmamba.serve.store import FlowQuery, FlowRecord, ResultStore, StoreError, open_store

T0 = 1_699_999_980.0  # a multiple of 60 s since the epoch: buckets start here


def add(store: ResultStore, records: list[FlowRecord]) -> None:
    store.add(records)
    assert store.flush(10)


def ids(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.flow_id for r in page.flows]


@pytest.fixture
def filled(store: ResultStore) -> ResultStore:
    add(
        store,
        [
            record("a", "web", t=T0 + 1, src="10.0.0.1", dst="10.0.0.9", sport=40001, dport=443),
            record("b", "dns", t=T0 + 2, src="10.0.0.2", dst="10.0.0.1", dport=53, protocol=17),
            record("c", "web", t=T0 + 3, src="fd77::1", dst="fd77::2", dport=8443),
            record("d", "voip", t=T0 + 65, sport=5004, dport=5004, protocol=17, unknown=True),
            record("e", "web", t=T0 + 70, src="10.0.0.3", dport=443, short=True, packets=2),
        ],
    )
    return store


def test_records_round_trip_with_every_field(store: ResultStore) -> None:
    r = record("x1", "chat", src="FD77:0:0::0001", unknown=True, short=True, packets=7)
    add(store, [r])
    (back,) = store.query(FlowQuery()).flows
    assert back == r
    assert back.src_ip == "fd77::1"  # addresses are stored in canonical form
    assert back.top == [("chat", 0.75), ("other", 0.2), ("third", 0.05)]
    assert back.to_dict()["protocol_name"] == "tcp"
    assert FlowRecord.from_dict(back.to_dict()) == r


def test_newest_first_and_paging(filled: ResultStore) -> None:
    page = filled.query(FlowQuery(limit=2))
    assert page.total == 5 and ids(page) == ["e", "d"]
    assert ids(filled.query(FlowQuery(limit=2, offset=2))) == ["c", "b"]
    assert ids(filled.query(FlowQuery(limit=2, offset=4))) == ["a"]
    assert filled.query(FlowQuery(limit=2, offset=9)).flows == []
    assert filled.query(FlowQuery(limit=0)).total == 5


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (FlowQuery(label="web"), ["e", "c", "a"]),
        (FlowQuery(label="nothing"), []),
        (FlowQuery(address="10.0.0.1"), ["d", "b", "a"]),  # as source or destination
        (FlowQuery(address="10.0.0.9"), ["a"]),
        (FlowQuery(address="fd77:0::2"), ["c"]),  # any spelling of the address
        (FlowQuery(port=443), ["e", "a"]),
        (FlowQuery(port=5004), ["d"]),
        (FlowQuery(port=40001), ["a"]),  # source ports count too
        (FlowQuery(protocol=17), ["d", "b"]),
        (FlowQuery(unknown=True), ["d"]),
        (FlowQuery(unknown=False), ["e", "c", "b", "a"]),
        (FlowQuery(since=T0 + 2, until=T0 + 65), ["c", "b"]),  # since inclusive, until not
        (FlowQuery(label="web", address="10.0.0.2", port=443), ["e"]),
        (FlowQuery(source="eth0", label="voip"), ["d"]),
        (FlowQuery(source="eth1"), []),
        (FlowQuery(since=T0 + 63, until=T0 + 64, time_field="flow"), ["d"]),  # first packet
    ],
)
def test_filters(filled: ResultStore, query: FlowQuery, expected: list[str]) -> None:
    page = filled.query(query)
    assert ids(page) == expected
    assert page.total == len(expected)


def test_same_flow_id_replaces_the_record(filled: ResultStore) -> None:
    add(filled, [record("a", "chat", t=T0 + 80, dport=22)])
    assert filled.count() == 5
    assert ids(filled.query(FlowQuery(label="web"))) == ["e", "c"]
    assert ids(filled.query(FlowQuery(port=22))) == ["a"]
    stats = filled.stats(T0, T0 + 120, 60)
    assert sum(s.flows for s in stats) == 5
    assert [(s.bucket, s.label, s.flows) for s in stats if s.label in ("chat", "web")] == [
        (T0, "web", 1),
        (T0 + 60, "chat", 1),
        (T0 + 60, "web", 1),
    ]


def test_stats_per_label_per_bucket(filled: ResultStore) -> None:
    stats = filled.stats(T0, T0 + 120, 60)
    got = [(s.bucket, s.label, s.unknown, s.flows, s.packets, s.bytes) for s in stats]
    assert got == [
        (T0, "dns", False, 1, 5, 1000),
        (T0, "web", False, 2, 10, 2000),
        (T0 + 60, "voip", True, 1, 5, 1000),
        (T0 + 60, "web", False, 1, 2, 1000),
    ]
    assert filled.stats(T0 + 60, T0 + 120, 60)[0].label == "voip"
    assert filled.stats(T0 + 200, T0 + 300, 60) == []
    by_flow_time = filled.stats(T0 - 60, T0 + 120, 60, time_field="flow")
    assert sum(s.flows for s in by_flow_time) == 5
    assert {s.bucket for s in by_flow_time} == {T0 - 60, T0, T0 + 60}  # a: first packet at T0-1


def test_redis_rounds_buckets_up_to_its_resolution(store: ResultStore) -> None:
    add(store, [record("a", t=T0 + 1), record("b", t=T0 + 12), record("c", t=T0 + 25)])
    stats = store.stats(T0, T0 + 60, 15)
    if store.backend == "redis":  # 10 s counters: 15 s buckets become 20 s ones
        assert [(s.bucket, s.flows) for s in stats] == [(T0, 2), (T0 + 20, 1)]
    else:
        assert [(s.bucket, s.flows) for s in stats] == [(T0, 2), (T0 + 15, 1)]


def test_retention_by_count_keeps_the_newest(store: ResultStore) -> None:
    add(store, [record(f"f{i}", t=T0 + i) for i in range(10)])
    assert store.retain(None, 4) == 6
    assert ids(store.query(FlowQuery())) == ["f9", "f8", "f7", "f6"]
    assert store.retain(None, 4) == 0
    assert sum(s.flows for s in store.stats(T0, T0 + 60, 60)) == 4  # counters follow


def test_retention_by_age(store: ResultStore) -> None:
    now = time.time()
    add(store, [record("old", t=now - 7200), record("new", t=now - 10)])
    assert store.retain(3600, None) == 1
    assert ids(store.query(FlowQuery())) == ["new"]


def test_retention_runs_in_the_writer(tmp_path: Path) -> None:
    with open_store(
        str(tmp_path / "r.sqlite"), max_flows=3, retention_interval_s=0.05, write_interval_s=0.01
    ) as s:
        s.add([record(f"f{i}", t=T0 + i) for i in range(8)])
        deadline = time.monotonic() + 5
        while s.count() != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.count() == 3 and s.rows_deleted == 5


def test_batched_writes_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    s = open_store(str(path), write_batch=500, write_interval_s=0.5)
    s.add([record(f"f{i}", t=T0 + i / 1000) for i in range(2500)])
    s.close()  # without an explicit flush
    reopened = SQLiteStore(path)
    assert reopened.count() == 2500
    assert reopened.query(FlowQuery(limit=1)).flows[0].flow_id == "f2499"
    reopened.close()


def test_full_write_queue_pushes_back(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "results.sqlite", max_pending=10)  # writer not started
    s.add([record(f"f{i}") for i in range(10)])
    with pytest.raises(StoreError, match="not keeping up"):
        s.add([record("one-too-many")], timeout_s=0.05)
    assert s.pending == 10
    assert s.flush(5) and s.count() == 10  # without a writer thread, flush writes itself
    s.close()


def test_readers_do_not_block_the_writer(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "results.sqlite"), write_batch=50, write_interval_s=0.001)
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                s.query(FlowQuery(label="web", limit=20))
                s.stats(T0, T0 + 10_000, 60)
            except Exception as exc:
                errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(20):
        s.add([record(f"f{i}-{j}", t=T0 + i) for j in range(50)])
    assert s.flush(20)
    done.set()
    for t in readers:
        t.join()
    assert errors == [] and s.count() == 1000 and s.write_errors == 0
    s.close()


def test_sqlite_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"folder .*missing does not exist"):
        SQLiteStore(tmp_path / "missing" / "r.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"garbage.sqlite: not a usable SQLite results store"):
        SQLiteStore(garbage)


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    with pytest.raises(StoreError, match=r"cannot use Redis at unix://.*nothing.sock"):
        open_store(f"unix://{tmp_path}/nothing.sock")


@pytest.mark.parametrize(
    "top",
    [
        [("web", 0.123456789), ('say "hi"\\', 1e-7), ("é中", 1.0)],
        [("a", 2.5e-05), ("b", 0.3333333333), ("c", 0.0)],
        [],
        [("nan", float("nan"))],
    ],
)
def test_top_classes_are_written_as_json_dumps_writes_them(top: list) -> None:
    import json

    from netmamba.serve.store import top_to_json

    expected = json.dumps([[label, round(p, 6)] for label, p in top], separators=(",", ":"))
    assert top_to_json(top) == expected
