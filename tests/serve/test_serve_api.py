"""The HTTP API: answers computed by hand from stored records, 4xx (never 5xx) for malformed
parameters, health, Prometheus metrics, OpenAPI, and the dashboard page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servehelpers import record

from netmamba.serve.api import create_app, parse_time
from netmamba.serve.metrics import ServiceMetrics
from netmamba.serve.store import FlowPage, FlowQuery, ResultStore, StoreError, open_store

NOW = time.time()
T0 = (NOW // 60) * 60 - 600  # ten minutes ago, on a minute boundary


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, ServiceMetrics]]:
    store = open_store(str(tmp_path_factory.mktemp("api") / "r.sqlite"), write_interval_s=0.01)
    store.add(
        [
            record("a", "web", t=T0 + 1, src="10.0.0.1", dport=443, packets=5, nbytes=1500),
            record("b", "dns", t=T0 + 2, dport=53, protocol=17, packets=2, nbytes=200),
            record("c", "web", t=T0 + 61, src="fd77::1", dst="fd77::2", packets=7, nbytes=7000),
            record("d", "voip", t=T0 + 62, protocol=17, unknown=True, packets=20, nbytes=4000),
        ]
    )
    assert store.flush(10)
    metrics = ServiceMetrics()
    status = {"model": "netmamba-fast", "source": "eth0", "problems": []}
    app = create_app(store, metrics, lambda: dict(status))
    app.state.status = status
    with TestClient(app) as client:
        yield client, metrics
    store.close()


@pytest.fixture
def client(served: tuple[TestClient, ServiceMetrics]) -> TestClient:
    return served[0]


def flow_ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [f["flow_id"] for f in response.json()["flows"]]


def test_flows_newest_first_with_paging(client: TestClient) -> None:
    body = client.get("/api/flows").json()
    assert body["total"] == 4 and body["limit"] == 100 and body["offset"] == 0
    assert [f["flow_id"] for f in body["flows"]] == ["d", "c", "b", "a"]
    assert flow_ids(client.get("/api/flows?limit=2&offset=1")) == ["c", "b"]
    first = body["flows"][3]
    assert first["src_ip"] == "10.0.0.1" and first["dst_port"] == 443
    assert first["protocol_name"] == "tcp" and first["packets"] == 5 and first["bytes"] == 1500
    assert first["top"][0] == {"label": "web", "probability": 0.75}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("label=web", ["c", "a"]),
        ("address=10.0.0.1", ["d", "b", "a"]),
        ("address=FD77:0::1", ["c"]),
        ("port=53", ["b"]),
        ("protocol=udp", ["d", "b"]),
        ("protocol=6", ["c", "a"]),
        ("unknown=true", ["d"]),
        ("unknown=false", ["c", "b", "a"]),
        (f"since={T0 + 2}&until={T0 + 62}", ["c", "b"]),
        ("since=-1m", []),
        ("since=-20m&until=now", ["d", "c", "b", "a"]),
        (f"until={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(T0 + 30))}", ["b", "a"]),
        ("source=eth0&label=voip", ["d"]),
    ],
)
def test_flow_filters(client: TestClient, params: str, expected: list[str]) -> None:
    assert flow_ids(client.get(f"/api/flows?{params}")) == expected


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ("port=abc", 422, "port"),
        ("port=70000", 422, "port"),
        ("port=-1", 422, "port"),
        ("limit=0", 422, "limit"),
        ("limit=100000", 422, "limit"),
        ("offset=-5", 422, "offset"),
        ("unknown=maybe", 422, "unknown"),
        ("time=yesterday", 422, "time"),
        ("address=not-an-ip", 400, "address='not-an-ip' is not an IPv4 or IPv6 address"),
        ("address=10.0.0.256", 400, "address"),
        ("protocol=pigeon", 400, "protocol='pigeon': expected tcp, udp"),
        ("protocol=300", 400, "protocol"),
        ("protocol=¹", 400, "protocol='¹': expected tcp, udp"),  # a digit to isdigit(), not int()
        ("since=last tuesday", 400, "since='last tuesday': expected seconds since the epoch"),
        ("since=nan", 400, "since='nan'"),
        ("since=1e999", 400, "since"),
        ("since=-5", 400, None),  # a relative time: fine, but until < since below
        (f"since={NOW}&until={NOW - 10}", 400, "is after until"),
        ("label=" + "x" * 300, 422, "label"),
    ],
)
def test_malformed_flow_parameters_are_4xx(
    client: TestClient, params: str, status: int, says: str | None
) -> None:
    response = client.get(f"/api/flows?{params}")
    if says is None:  # "-5" is 5 seconds ago: a valid time
        assert response.status_code == 200
        return
    assert response.status_code == status, response.text
    assert says in response.text


@pytest.mark.parametrize(
    ("params", "status"),
    [("bucket=0", 422), ("bucket=abc", 422), ("since=-30d&bucket=1", 400), ("since=junk", 400)],
)
def test_malformed_stats_parameters_are_4xx(client: TestClient, params: str, status: int) -> None:
    assert client.get(f"/api/stats?{params}").status_code == status


PARAMETERS = ["label", "address", "port", "protocol", "source", "unknown", "since", "until"]
PARAMETERS += ["time", "limit", "offset", "bucket", "seconds"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(PARAMETERS),
    value=st.text(max_size=40),
    path=st.sampled_from(["/api/flows", "/api/stats", "/api/throughput"]),
)
def test_no_parameter_value_makes_a_server_error(
    client: TestClient, name: str, value: str, path: str
) -> None:
    response = client.get(path, params={name: value})
    assert response.status_code < 500, (name, value, response.text)


def test_stats_per_label_per_bucket(client: TestClient) -> None:
    body = client.get(f"/api/stats?since={T0}&until={T0 + 120}&bucket=60").json()
    assert body["bucket"] == 60 and body["since"] == T0
    got = [(b["t"], b["label"], b["unknown"], b["flows"], b["bytes"]) for b in body["buckets"]]
    assert got == [
        (T0, "dns", False, 1, 200),
        (T0, "web", False, 1, 1500),
        (T0 + 60, "voip", True, 1, 4000),
        (T0 + 60, "web", False, 1, 7000),
    ]
    assert [(t["label"], t["flows"], t["packets"]) for t in body["labels"]] == [
        ("web", 2, 12),  # most flows first
        ("dns", 1, 2),
        ("voip", 1, 20),
    ]
    default = client.get("/api/stats").json()  # the last 15 minutes, about 60 buckets
    assert default["bucket"] == 15 and sum(b["flows"] for b in default["buckets"]) == 4


def test_health_reports_and_degrades(served: tuple[TestClient, ServiceMetrics]) -> None:
    client, metrics = served
    metrics.flows_classified.inc(4)
    response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["service"] == {"model": "netmamba-fast", "source": "eth0"}
    assert body["store"]["backend"] == "sqlite" and body["store"]["flows"] == 4
    assert body["counters"]["flows_classified"] >= 4
    client.app.state.status["problems"] = ["the inference worker died (exit code -9)"]
    try:
        degraded = client.get("/api/health")
        assert degraded.status_code == 503
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["problems"] == ["the inference worker died (exit code -9)"]
    finally:
        client.app.state.status["problems"] = []


def test_metrics_are_valid_prometheus_text(served: tuple[TestClient, ServiceMetrics]) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    client, metrics = served
    metrics.packets.inc(1234)
    metrics.batch_size.observe_many([1, 3, 3, 64, 2000])
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(response.text)}
    packets = families["netmamba_packets"]  # the parser drops the _total suffix
    assert packets.type == "counter" and packets.samples[0].value >= 1234
    batch = {(s.name, s.labels.get("le")): s.value for s in families["netmamba_batch_size"].samples}
    # By hand: 1 <= 1; 3 and 3 <= 4; 64 <= 64; 2000 above every bound.
    assert batch[("netmamba_batch_size_bucket", "1.0")] == 1
    assert batch[("netmamba_batch_size_bucket", "2.0")] == 1
    assert batch[("netmamba_batch_size_bucket", "4.0")] == 3
    assert batch[("netmamba_batch_size_bucket", "64.0")] == 4
    assert batch[("netmamba_batch_size_bucket", "1024.0")] == 4
    assert batch[("netmamba_batch_size_bucket", "+Inf")] == 5
    assert batch[("netmamba_batch_size_count", None)] == 5
    assert batch[("netmamba_batch_size_sum", None)] == 2071
    for name in ("netmamba_flows_dropped", "netmamba_flows_evicted", "netmamba_flows_seen",
                 "netmamba_batch_latency_seconds", "netmamba_capture_kernel_drops"):  # fmt: skip
        assert name in families


def test_throughput_history(served: tuple[TestClient, ServiceMetrics]) -> None:
    client, metrics = served
    start = time.time()
    before = metrics.packets.value
    metrics.sample(start)
    metrics.packets.inc(5000)
    metrics.bytes.inc(2_500_000)
    metrics.sample(start + 2)
    points = client.get("/api/throughput?seconds=60").json()
    last = points[-1]
    assert last["t"] == start + 2
    assert last["packets_per_s"] == 2500  # 5000 packets in 2 s
    assert last["mbps"] == 10  # 2.5 MB * 8 / 2 s
    assert metrics.packets.value == before + 5000


def test_openapi_describes_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/api/flows", "/api/stats", "/api/health", "/api/throughput", "/metrics"):
        assert path in spec["paths"]
    params = {p["name"] for p in spec["paths"]["/api/flows"]["get"]["parameters"]}
    assert {"label", "address", "port", "protocol", "unknown", "since", "until", "limit"} <= params
    assert "Flow" in spec["components"]["schemas"]


def test_docs_page_lists_every_operation_without_the_internet(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN script
    assert "<script" not in page.text
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f'<section id="{method}{path}">' in page.text
    # /api/flows' parameters with their types and limits, as the description gives them
    assert "<td><code>limit</code></td><td>integer (minimum 1, maximum 1000) = 100</td>" in (
        page.text
    )
    assert "<td><code>time</code></td><td>one of classified, flow = classified</td>" in page.text
    assert client.get("/redoc").status_code == 404


def test_dashboard_page_needs_nothing_from_the_internet(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page.text))
    assert urls <= {"http://www.w3.org/2000/svg"}  # an XML namespace, never fetched
    assert "<script src" not in page.text and '<link rel="stylesheet"' not in page.text


class BrokenStore(ResultStore):
    backend = "broken"

    def _write(self, records: list) -> None:  # type: ignore[type-arg]
        raise StoreError("disk on fire")

    def query(self, q: FlowQuery) -> FlowPage:
        raise StoreError("database is locked")

    def stats(self, since: float, until: float, bucket_s: float, time_field: str = "c") -> list:  # type: ignore[type-arg]
        raise StoreError("database is locked")

    def count(self) -> int:
        raise StoreError("database is locked")

    def retain(self, max_age_s: float | None, max_flows: int | None) -> int:
        return 0

    def _close(self) -> None:
        pass


def test_a_failing_store_is_503_not_500(tmp_path: Path) -> None:
    with TestClient(create_app(BrokenStore())) as client:
        response = client.get("/api/flows")
        assert response.status_code == 503
        assert "results store unavailable: database is locked" in response.text
        assert client.get("/api/stats").status_code == 503
        health = client.get("/api/health")
        assert health.status_code == 503 and "database is locked" in health.text


def test_parse_time_forms() -> None:
    now = 1_700_000_000.0
    assert parse_time("now", now, "t") == now
    assert parse_time("-15m", now, "t") == now - 900
    assert parse_time("-2h", now, "t") == now - 7200
    assert parse_time("-1d", now, "t") == now - 86400
    assert parse_time("-30", now, "t") == now - 30
    assert parse_time("1699990000.5", now, "t") == 1699990000.5
    assert parse_time("2023-11-14T22:13:20Z", now, "t") == 1_700_000_000.0
    assert parse_time("2023-11-14T23:13:20+01:00", now, "t") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20", now, "t") == 1_700_000_000.0  # naive = UTC
