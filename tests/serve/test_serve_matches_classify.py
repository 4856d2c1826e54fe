"""A replay through the whole service (real flow table, real model in the worker) stores every
flow exactly once, with the label, probability and unknown flag `netmamba classify` gives the
same flow with the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import servemodel

from netmamba.classify import classify_captures
from netmamba.serve.flowtable import MeterFlowTable, table_config_for
from netmamba.serve.model import checkpoint_info, model_spec
from netmamba.serve.replay import CaptureFiles, Replay
from netmamba.serve.service import ReplaySource, ServeConfig, Service
from netmamba.serve.sqlite_store import SQLiteStore
from netmamba.serve.store import FlowQuery, FlowRecord

THREADS = 2
TOLERANCE = 1e-4  # on probabilities


def captures(folder: Path) -> Path:
    """Two captures: the same conversations recorded on two subnets, a minute apart."""
    folder.mkdir()
    servemodel.write_traffic(folder / "a.pcap", n_sessions=14, subnet=1)
    servemodel.write_traffic(
        folder / "b.pcap", n_sessions=10, subnet=2, start_ns=servemodel.T0 + 60 * 10**9
    )
    return folder


def serve(folder: Path, model: Path, store: Path, **table: object) -> tuple:
    info = checkpoint_info(str(model))
    flow_table = MeterFlowTable(
        info.flow,
        info.data_features,
        info.debias,
        table_config_for(info, **table),
    )
    source = ReplaySource(Replay(CaptureFiles(str(folder))), str(folder))
    config = ServeConfig(store=str(store), http=False, log_interval_s=0, max_batch=16)
    summary = Service(config, source, flow_table, model_spec(info, threads=THREADS)).run()
    with SQLiteStore(store) as s:
        records = s.query(FlowQuery(limit=100_000)).flows
    return summary, records


def key(capture: str, src: str, sport: int, dst: str, dport: int, proto: int, first_s: float):
    return (capture, src, int(sport), dst, int(dport), int(proto), round(first_s, 6))


def by_flow(records: list[FlowRecord]) -> dict:
    out: dict = {}
    for r in records:
        k = key(r.source, r.src_ip, r.src_port, r.dst_ip, r.dst_port, r.protocol, r.first_ts)
        assert k not in out, f"flow {k} stored twice"
        out[k] = r
    return out


@pytest.mark.parametrize("mode", ["unidirectional", "bidirectional"])
def test_every_flow_stored_once_with_the_label_classify_gives(tmp_path: Path, mode: str) -> None:
    model = servemodel.make_checkpoint(tmp_path / "model", flow={"mode": mode}, min_packets=2)
    folder = captures(tmp_path / "captures")
    summary, records = serve(folder, model, tmp_path / "results.sqlite")

    expected = classify_captures([folder], model=model).flows
    ok = expected[expected["status"] == "ok"]
    stored = by_flow(records)
    assert len(ok) > 20 and ok["label"].nunique() >= 2  # a check that can tell labels apart
    assert len(stored) == len(ok) == summary.flows_classified
    assert summary.flows_too_short == (expected["status"] == "too_short").sum() > 0
    assert summary.flows_other_protocol == (expected["status"] == "other_protocol").sum()
    assert summary.flows_lost == summary.flows_dropped == 0
    for row in ok.itertuples():
        first_s = row.first_seen.value / 1e9
        r = stored[key(row.capture, row.src_ip, row.src_port, row.dst_ip, row.dst_port,
                       row.protocol, first_s)]  # fmt: skip
        # Batches of other sizes round differently (~1e-5): only a near tie may swap places.
        assert r.confidence == pytest.approx(row.confidence, abs=TOLERANCE)
        if row.confidence - row.confidence_2 > TOLERANCE:
            assert r.label == row.label
        if min(row.confidence - row.confidence_2, row.confidence_2 - row.confidence_3) > TOLERANCE:
            assert [t[0] for t in r.top] == [row.label, row.label_2, row.label_3]
        assert r.unknown == row.unknown
        # Classified as soon as it had what the model reads, or at its end with all it had.
        assert r.short == (row.packets < 20)
        assert r.packets == row.packets if r.short else r.packets >= 20
    assert {r.source for r in records} == {str(folder / "a.pcap"), str(folder / "b.pcap")}


def test_flows_of_protocols_the_model_never_saw_are_left_out_as_classify_leaves_them(
    tmp_path: Path,
) -> None:
    import pcapgen

    model = servemodel.make_checkpoint(tmp_path / "model", min_packets=2)
    meta_path = model / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["cleaning"]["protocol_filter"] = "tcp_udp"  # the built-in model's
    meta_path.write_text(json.dumps(meta))
    pings = [
        (servemodel.T0 + (host * 10 + k) * 1_000_000,
         pcapgen.ethernet(pcapgen.ip(f"10.9.0.{host}", "192.0.2.1", pcapgen.icmp_echo(host, k))))
        for host in range(1, 4) for k in range(3)
    ]  # fmt: skip
    folder = tmp_path / "captures"
    folder.mkdir()
    frames = sorted(servemodel.traffic(n_sessions=8) + pings, key=lambda f: f[0])
    pcapgen.write_pcap(folder / "a.pcap", frames)
    summary, records = serve(folder, model, tmp_path / "results.sqlite")
    expected = classify_captures([folder], model=model).flows
    assert (expected["status"] == "other_protocol").sum() == 3  # the three ping flows
    assert summary.flows_other_protocol == 3
    assert len(by_flow(records)) == (expected["status"] == "ok").sum() == summary.flows_classified
    assert all(r.protocol in (6, 17) for r in records)


def test_a_deadline_classifies_long_flows_early_with_what_they_have(tmp_path: Path) -> None:
    model = servemodel.make_checkpoint(tmp_path / "model")
    folder = captures(tmp_path / "captures")
    # Sessions last up to 40 ms (1 ms a packet): a 10 ms window cuts the long ones.
    summary, records = serve(folder, model, tmp_path / "results.sqlite", classify_within_s=0.01)
    expected = classify_captures([folder], model=model).flows
    assert len(by_flow(records)) == len(expected) == summary.flows_classified
    cut = [r for r in records if r.short and r.last_ts - r.first_ts < 0.0105]
    longest = expected["duration_s"].max()
    assert longest > 0.02 and cut  # some flows were cut by the window...
    assert all(r.last_ts - r.first_ts <= 0.0105 for r in records)  # ...and every flow obeys it


def test_the_workers_predict_equals_the_predictor_however_it_splits_the_batch(
    tmp_path: Path,
) -> None:
    import numpy as np

    from netmamba.dataset.extract import extract_captures
    from netmamba.inference import Predictor
    from netmamba.serve.model import distinct_rows, load_predict

    model = servemodel.make_checkpoint(tmp_path / "model")
    capture = servemodel.write_traffic(tmp_path / "t.pcap", n_sessions=8)
    arrays = extract_captures([capture]).arrays
    n = len(arrays["bytes"])
    order = np.random.default_rng(0).permutation(np.r_[np.arange(n), np.arange(0, n, 3)])
    batch = {k: v[order] for k, v in arrays.items()}  # every third flow twice, shuffled
    first, inverse = distinct_rows(batch)
    assert len(first) <= n < len(order)
    for name, v in batch.items():
        np.testing.assert_array_equal(v[first][inverse], v, err_msg=name)
    expected = Predictor.load(model, device="cpu").predict(batch)
    assert len(set(expected["label"].tolist())) >= 2
    for threads, chunk in ((1, None), (2, 3), (3, 1)):
        got = load_predict(str(model), threads, chunk)(batch)
        np.testing.assert_allclose(got["probs"], expected["probs"], atol=TOLERANCE)
        np.testing.assert_array_equal(got["unknown"], expected["unknown"])


def test_redis_mode_stores_the_same_flows(tmp_path: Path, redis_url: str) -> None:
    from netmamba.serve.redis_store import RedisStore

    model = servemodel.make_checkpoint(tmp_path / "model", min_packets=2)
    capture = servemodel.write_traffic(tmp_path / "t.pcap", n_sessions=6)
    info = checkpoint_info(str(model))
    table = MeterFlowTable(info.flow, info.data_features, info.debias,
                           table_config_for(info))  # fmt: skip
    source = ReplaySource(Replay(CaptureFiles(str(capture))), str(capture))
    config = ServeConfig(store=redis_url, http=False, log_interval_s=0)
    summary = Service(config, source, table, model_spec(info, threads=1)).run()
    with RedisStore(redis_url) as store:
        records = store.query(FlowQuery(source=str(capture), limit=1000)).flows
    expected = classify_captures([capture], model=model).flows
    ok = expected[expected["status"] == "ok"]
    stored = by_flow(records)
    assert len(stored) == len(ok) == summary.flows_classified > 10
    for row in ok.itertuples():
        r = stored[key(row.capture, row.src_ip, row.src_port, row.dst_ip, row.dst_port,
                       row.protocol, row.first_seen.value / 1e9)]  # fmt: skip
        assert r.confidence == pytest.approx(row.confidence, abs=TOLERANCE)
