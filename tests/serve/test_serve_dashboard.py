"""The dashboard in a real headless browser (Debian's chromium): it shows a replay's flows.

The page is loaded from a running service; chromium runs its scripts (which poll the API) and
dumps the resulting DOM, then takes a screenshot kept under test-artifacts/ for a person.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import servemodel
from servehelpers import record

from netmamba.serve.flowtable import FlowTableConfig, MeterFlowTable
from netmamba.serve.model import checkpoint_info, model_spec
from netmamba.serve.replay import CaptureFiles, Replay
from netmamba.serve.service import ReplaySource, ServeConfig, Service
from netmamba.serve.store import open_store

LABELS = servemodel.LABELS

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def history(now: float) -> list:  # type: ignore[type-arg]
    """Flows classified over the last 14 minutes, so the chart has a past to show: a steady
    web/dns background, a voice call that comes and goes, a few unknown flows."""
    out, n = [], 0
    for k in range(14 * 12):  # every 5 s
        t = now - 14 * 60 + k * 5
        mix = {"web": 3 + k % 3, "mail": 2, "voip": 4 if (k // 24) % 2 else 0, "chat": k % 2,
               "video": 1, "game": k % 3 == 0}  # fmt: skip
        for label, count in mix.items():
            for _ in range(count):
                n += 1
                out.append(record(f"h{n}", label, t=t + n % 5, src=f"10.9.0.{n % 200 + 1}"))
        if k % 17 == 0:
            out.append(record(f"u{k}", "chat", t=t, unknown=True))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_shows_the_flows_of_a_replay(tmp_path: Path, artifacts_dir: Path) -> None:
    db = tmp_path / "results.sqlite"
    with open_store(str(db)) as store:
        store.add(history(time.time()))
    # A real replay: a capture through the flow table and the model (in its worker).
    capture = servemodel.write_traffic(tmp_path / "replay.pcap", n_sessions=9)
    info = checkpoint_info(servemodel.make_checkpoint(tmp_path / "model"))
    table = MeterFlowTable(
        info.flow, info.data_features, info.debias, FlowTableConfig(info.ready_packets)
    )
    source = ReplaySource(Replay(CaptureFiles(str(capture))), str(capture))
    config = ServeConfig(store=str(db), port=0, log_interval_s=0, keep_serving=True)
    service = Service(config, source, table, model_spec(info, threads=1))
    service.start()
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False})
    runner.start()
    try:
        assert service._done.wait(60)
        time.sleep(2.5)  # two throughput samples for the sparklines
        assert service.http is not None
        url = service.http.url
        api = httpx.get(url + "api/flows", params={"limit": 50}).json()["flows"]
        replayed = [f for f in api if f["source"] == str(capture)]
        assert len(replayed) == service.metrics.counters()["flows_classified"] > 30

        dom = chromium(tmp_path / "p1", "--virtual-time-budget=10000", "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        rows = re.findall(r'<tr data-flow-id="([^"]+)" data-label="([^"]+)"', dom.stdout)
        # The table shows the 50 newest flows, as the API lists them, with the same labels.
        assert rows == [(f["flow_id"], f["label"]) for f in api]
        assert {fid for fid, _ in rows} >= {f["flow_id"] for f in replayed}
        assert 'data-flows-shown="50"' in dom.stdout
        assert f'id="model">{tmp_path / "model"}<' in dom.stdout  # the model as named
        assert re.search(r'id="status" class="pill ok"', dom.stdout)
        legend = re.findall(r'<li><span class="sw"[^>]*></span><span>([^<]+)</span>', dom.stdout)
        assert set(legend) >= set(LABELS)  # the share chart's legend: every label present
        assert dom.stdout.count('data-label="web"') >= 2  # a chart area and table rows

        shot = artifacts_dir / "dashboard.png"
        shot.unlink(missing_ok=True)
        result = chromium(
            tmp_path / "p2",
            "--virtual-time-budget=10000",
            "--window-size=1600,1200",
            f"--screenshot={shot}",
            url,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        dark = artifacts_dir / "dashboard-dark.png"  # what an operator's dark screen shows
        chromium(
            tmp_path / "p3",
            "--virtual-time-budget=10000",
            "--window-size=1600,1200",
            "--force-dark-mode",
            f"--screenshot={dark}",
            url,
        )
    finally:
        service.stop()
        runner.join(30)
