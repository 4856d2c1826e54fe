"""Overload with the real pieces: a capture replayed far faster than the model can follow.
Fed as a live source the service drops ready flows and counts them, with bounded memory; as a
replay it waits for the model and loses nothing. Either way every flow is accounted for."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import servemodel

from netmamba.serve.flowtable import FlowTableConfig, MeterFlowTable
from netmamba.serve.model import checkpoint_info, model_spec
from netmamba.serve.replay import CaptureFiles, Replay
from netmamba.serve.service import ModelSpec, ReplaySource, ServeConfig, Service
from netmamba.serve.sqlite_store import SQLiteStore

QUEUE, BATCH, RESULTS = 16, 4, 4


class FloodSource(ReplaySource):
    """A capture replayed at full speed posing as a live link: packets do not wait for us."""

    live = True


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("overload")
    model = servemodel.make_checkpoint(folder / "model")
    capture = servemodel.write_traffic(folder / "flood.pcap", n_sessions=120)
    return model, capture


def run(tmp_path: Path, model: Path, capture: Path, live: bool) -> tuple:
    info = checkpoint_info(model)
    spec = model_spec(info, threads=1)
    slow = ModelSpec(spec.name, spec.labels, spec.arrays,
                     functools.partial(servemodel.slowed, spec.predict_factory, 0.03))  # fmt: skip
    table = MeterFlowTable(
        info.flow,
        info.data_features,
        info.debias,
        FlowTableConfig(ready_packets=info.ready_packets, max_flows=64),
    )
    source_type = FloodSource if live else ReplaySource
    source = source_type(Replay(CaptureFiles(str(capture))), capture.name)
    config = ServeConfig(
        store=str(tmp_path / "results.sqlite"),
        http=False,
        log_interval_s=0,
        max_batch=BATCH,
        max_wait_ms=0,
        queue_flows=QUEUE,
        result_batches=RESULTS,
    )
    service = Service(config, source, table, slow)
    summary = service.run()
    with SQLiteStore(tmp_path / "results.sqlite") as store:
        stored = store.count()
    return service, table, summary, stored


@pytest.mark.parametrize("live", [True, False], ids=["live-drops", "replay-waits"])
def test_overload_keeps_memory_bounded(tmp_path: Path, setup: tuple, live: bool) -> None:
    model, capture = setup
    service, table, summary, stored = run(tmp_path, model, capture, live)
    assert service.batcher.drop_when_full is live
    if live:
        assert summary.flows_dropped > 0
        assert service.metrics.counters()["flows_dropped"] == summary.flows_dropped
        assert f"netmamba_flows_dropped_total {summary.flows_dropped}" in service.metrics.render()
    else:
        assert summary.flows_dropped == 0
    # Every flow metered is stored or counted as dropped: none lost, none twice.
    assert summary.flows_seen > 400
    assert stored == summary.flows_classified
    assert stored + summary.flows_dropped == summary.flows_seen
    assert summary.flows_lost == 0
    # Flows between the flow table and the store: the ring, one batch in the model, the
    # result queue, one batch with the collector; the flow table holds at most 64 flows
    # (the least recently active are handed over early, counted as evicted).
    assert service.peak_in_flight <= QUEUE + BATCH + RESULTS * BATCH + BATCH
    assert table.flows_evicted > 0 and table.active_flows == 0
