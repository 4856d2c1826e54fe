"""Live capture end to end with the real pieces: frames sent over a veth pair into a network
namespace the test creates are captured, metered with the model's flow settings, classified by
the model in the worker, and appear through the HTTP API while the service runs."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import servemodel

from netmamba.capture.live import LiveCapture, LiveCaptureConfig
from netmamba.serve.flowtable import FlowTableConfig, MeterFlowTable
from netmamba.serve.model import checkpoint_info, model_spec
from netmamba.serve.service import LiveSource, ServeConfig, Service
from netns import ipv4_frame, veth_pair

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_PACKET is Linux")


def wait_for(url: str, total: int, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        page = httpx.get(url, params={"limit": 100}).json()
        if page["total"] >= total or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def test_live_traffic_is_classified_and_appears_through_the_api(tmp_path: Path) -> None:
    # Flows idle for 0.5 s end (and are classified with what they have).
    model = servemodel.make_checkpoint(tmp_path / "model", flow={"idle_timeout": 0.5})
    info = checkpoint_info(model)
    with veth_pair() as veth:
        capture = LiveCapture(
            LiveCaptureConfig(interface=veth.host_if, bpf="udp dst port 7777", poll_timeout_ms=50)
        )
        table = MeterFlowTable(
            info.flow,
            info.data_features,
            info.debias,
            FlowTableConfig(ready_packets=info.ready_packets),
            source=veth.host_if,
        )
        config = ServeConfig(
            store=str(tmp_path / "results.sqlite"),
            port=0,
            max_wait_ms=20,
            expire_interval_s=0.1,
            log_interval_s=0,
        )
        service = Service(config, LiveSource(capture), table, model_spec(info, threads=1))
        service.start()
        runner = threading.Thread(target=service.run, kwargs={"install_signals": False})
        runner.start()
        try:
            assert service.http is not None
            url = service.http.url + "api/flows"
            inject = veth.injector()
            # A long flow: classified as soon as it has its 20th packet, while still running.
            for k in range(25):
                inject.send(ipv4_frame(veth, 17, 5000, 7777, b"long %d" % k))
                time.sleep(0.002)
            page = wait_for(url, 1)
            (long_flow,) = page["flows"]
            assert (long_flow["src_port"], long_flow["short"]) == (5000, False)
            assert long_flow["packets"] >= 20 and long_flow["label"] in servemodel.LABELS
            assert long_flow["src_ip"] == veth.peer_ip and long_flow["dst_ip"] == veth.host_ip
            assert long_flow["source"] == veth.host_if
            # Short flows: classified when idle (0.5 s), with their 3 packets.
            for rnd in range(3):
                for flow in range(5):
                    inject.send(ipv4_frame(veth, 17, 6000 + flow, 7777, b"r%d" % rnd * 9))
            page = wait_for(url, 6)
            short = sorted((f for f in page["flows"] if f["src_port"] != 5000),
                           key=lambda f: f["src_port"])  # fmt: skip
            assert [f["src_port"] for f in short] == [6000, 6001, 6002, 6003, 6004]
            assert all(f["short"] and f["packets"] == 3 for f in short)
            assert all(f["bytes"] == 3 * (20 + 8 + 18) for f in short)  # by hand: IP+UDP+18
            metrics = httpx.get(service.http.url + "metrics").text
            assert "netmamba_packets_total 40" in metrics
            assert "netmamba_flows_classified_total 6" in metrics
            health = httpx.get(service.http.url + "api/health").json()
            assert health["status"] == "ok" and health["service"]["live"] is True
        finally:
            service.stop()
            runner.join(30)
    assert not runner.is_alive()
    assert service.metrics.kernel_received.value == 40
    assert service.metrics.kernel_dropped.value == 0
