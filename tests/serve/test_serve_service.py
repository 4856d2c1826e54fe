"""The service end to end with a stand-in flow table and model: every flow stored once with its
label, overload drops counted with bounded memory, clean shutdown on SIGTERM, the HTTP API."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from servehelpers import (
    LABELS,
    SPEC,
    KeyedFlowTable,
    label_of,
    make_label_predict,
    packet,
)

from netmamba.capture.live import LiveCapture, LiveCaptureConfig
from netmamba.serve.replay import Replay
from netmamba.serve.service import (
    HttpServer,
    LiveSource,
    ModelSpec,
    ReplaySource,
    ServeConfig,
    ServeError,
    Service,
)
from netmamba.serve.sqlite_store import SQLiteStore
from netmamba.serve.store import FlowQuery
from netns import ipv4_frame, veth_pair

T0 = 1_700_000_000_000_000_000


def model(delay_s: float = 0.0) -> ModelSpec:
    return ModelSpec("stand-in", LABELS, SPEC, functools.partial(make_label_predict, delay_s))


def capture(n_full: int, n_short: int = 0, gap_ns: int = 1_000_000) -> list[tuple[int, bytes, int]]:
    """n_full flows of 3 packets (interleaved), then n_short flows of 1 packet."""
    packets = []
    for rnd in range(3):
        for f in range(n_full):
            packets.append(packet(f, T0 + (rnd * n_full + f) * gap_ns, 100 + rnd))
    start = T0 + 3 * n_full * gap_ns
    packets += [packet(n_full + i, start + i * gap_ns, 60) for i in range(n_short)]
    return packets


def stored(path: Path) -> dict[int, object]:
    store = SQLiteStore(path)
    page = store.query(FlowQuery(limit=100_000))
    store.close()
    assert page.total == len(page.flows)
    by_flow = {}
    for r in page.flows:
        flow = r.src_port - 10000
        assert flow not in by_flow, f"flow {flow} stored twice"
        by_flow[flow] = r
    return by_flow


def config(tmp_path: Path, **changes: object) -> ServeConfig:
    base = ServeConfig(store=str(tmp_path / "results.sqlite"), http=False, log_interval_s=0)
    return base.replace(**changes)


def test_replay_stores_every_flow_once_with_its_label(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_batch=16)
    source = ReplaySource(Replay(capture(300, n_short=20)), "capture.pcap")
    summary = Service(cfg, source, KeyedFlowTable(), model()).run()
    results = stored(tmp_path / "results.sqlite")
    assert sorted(results) == list(range(320))
    for flow, r in results.items():
        assert r.label == label_of(flow)
        assert r.confidence == pytest.approx(0.7)
        assert r.top[0][0] == label_of(flow) and len(r.top) == 3
        assert r.unknown == ((flow % 256) % 7 == 0)  # x[0] = flow % 256
        assert r.short == (flow >= 300)
        assert r.packets == (3 if flow < 300 else 1)
        assert r.source == "capture.pcap"
    assert r.first_ts >= T0 / 1e9
    assert summary.packets == 3 * 300 + 20 and summary.flows_classified == 320
    assert summary.flows_seen == 320 and summary.flows_dropped == summary.flows_lost == 0


def test_overload_drops_with_bounded_memory(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_batch=8, queue_flows=32, overload="drop", max_wait_ms=0)
    source = ReplaySource(Replay(capture(2000)), "flood.pcap")
    service = Service(cfg, source, KeyedFlowTable(), model(delay_s=0.05))
    summary = service.run()
    results = stored(tmp_path / "results.sqlite")
    assert summary.flows_dropped > 0
    assert len(results) == summary.flows_classified
    assert summary.flows_classified + summary.flows_dropped == 2000
    assert summary.flows_lost == 0
    # Flows between submit and store: the ring (32), one batch in predict, the result queue
    # (16 batches of 8), one batch with the collector; never more, however long the flood.
    assert service.peak_in_flight <= 32 + 8 + 16 * 8 + 8
    assert all(r.label == label_of(flow) for flow, r in results.items())


def test_sigterm_finishes_cleanly_with_nothing_lost(tmp_path: Path) -> None:
    assert threading.current_thread() is threading.main_thread()
    cfg = config(tmp_path, max_wait_ms=200)
    # 3 packets per flow, 2 ms apart at the recorded pace: about 1000 flows in 6 s.
    source = ReplaySource(Replay(capture(1000, gap_ns=2_000_000), speed=1.0), "slow.pcap")
    service = Service(cfg, source, KeyedFlowTable(), model())
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    summary = service.run()
    timer.join()
    results = stored(tmp_path / "results.sqlite")
    assert 0 < summary.flows_seen < 1000  # it stopped early...
    assert len(results) == summary.flows_classified == summary.flows_seen  # ...keeping all
    assert summary.flows_lost == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


def test_http_api_serves_the_results(tmp_path: Path) -> None:
    cfg = config(tmp_path, http=True, port=0, keep_serving=True)
    source = ReplaySource(Replay(capture(50)), "capture.pcap")
    service = Service(cfg, source, KeyedFlowTable(), model())
    thread = threading.Thread(target=service.run, kwargs={"install_signals": False})
    service.start()
    thread.start()
    try:
        assert service._done.wait(60)
        assert service.http is not None
        url = service.http.url
        flows = httpx.get(url + "api/flows", params={"limit": 1000}).json()
        assert flows["total"] == 50
        assert {f["label"] for f in flows["flows"]} == set(LABELS)
        health = httpx.get(url + "api/health").json()
        assert health["status"] == "ok" and health["service"]["model"] == "stand-in"
        assert health["counters"]["flows_classified"] == 50
        metrics = httpx.get(url + "metrics").text
        assert "netmamba_flows_classified_total 50" in metrics
        assert 'netmamba_info{model="stand-in",source="capture.pcap",store="sqlite"} 1' in metrics
        assert httpx.get(url).text.startswith("<!doctype html>")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"127.0.0.1:{port}.*another process uses this port"):
            HttpServer(object(), "127.0.0.1", port)


def test_port_in_use_at_start_leaves_no_worker_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = config(tmp_path, http=True, port=taken.getsockname()[1])
        source = ReplaySource(Replay(capture(1)), "x.pcap")
        service = Service(cfg, source, KeyedFlowTable(), model())
        with pytest.raises(ServeError, match="another process uses this port"):
            service.run()
    assert service.batcher._process is not None and not service.batcher._process.is_alive()


def test_model_that_cannot_load_is_a_clear_error(tmp_path: Path) -> None:
    from servehelpers import make_nothing

    broken = ModelSpec("missing", LABELS, SPEC, make_nothing)
    source = ReplaySource(Replay(capture(1)), "x.pcap")
    service = Service(config(tmp_path), source, KeyedFlowTable(), broken)
    with pytest.raises(ServeError, match=r"(?s)model missing could not start.*no checkpoint"):
        service.start()
    service.store.close()


def test_serve_config_checks_values() -> None:
    from netmamba.config import ConfigError

    with pytest.raises(ConfigError, match="overload must be auto, drop or block"):
        ServeConfig(overload="panic")
    with pytest.raises(ConfigError, match="port must be 0-65535"):
        ServeConfig(port=70000)
    assert ServeConfig.from_json(ServeConfig(port=9000).to_json()).port == 9000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_PACKET is Linux")
def test_live_capture_flows_appear_through_the_api(tmp_path: Path) -> None:
    with veth_pair() as veth:
        capture = LiveCapture(
            LiveCaptureConfig(interface=veth.host_if, bpf="udp dst port 7777", poll_timeout_ms=50)
        )
        cfg = config(tmp_path, http=True, port=0, max_wait_ms=20)
        service = Service(cfg, LiveSource(capture), KeyedFlowTable(), model())
        assert service.batcher.drop_when_full  # live: overload drops rather than waits
        service.start()
        runner = threading.Thread(target=service.run, kwargs={"install_signals": False})
        runner.start()
        try:
            inject = veth.injector()
            for rnd in range(3):
                for flow in range(20):  # the stand-in table names a flow by 4 leading bytes
                    frame = ipv4_frame(veth, 17, 5000 + flow, 7777, b"round %d" % rnd)
                    inject.send(b"%04d" % flow + frame[4:])
            assert service.http is not None
            url = service.http.url + "api/flows"
            deadline = time.monotonic() + 30
            while httpx.get(url).json()["total"] < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            flows = httpx.get(url, params={"limit": 100}).json()["flows"]
            assert sorted(f["src_port"] - 10000 for f in flows) == list(range(20))
            assert all(f["label"] == label_of(f["src_port"] - 10000) for f in flows)
            assert {f["source"] for f in flows} == {veth.host_if}
            metrics = httpx.get(service.http.url + "metrics").text
            assert "netmamba_packets_total 60" in metrics
        finally:
            service.stop()
            runner.join(30)
    assert not runner.is_alive()
    assert service.metrics.kernel_received.value == 60
