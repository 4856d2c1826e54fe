"""`prepare` end to end on captures the test writes: the dataset folder, its manifest, the
loader, determinism (workers, shards, file order), caps, atomic output, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import pcapgen as pg
from netmamba.dataset import (
    SPLIT_NAMES,
    CleaningConfig,
    DatasetError,
    PrepareConfig,
    PrepareError,
    SplitConfig,
    extract_captures,
    load_dataset,
    merge_partials,
    prepare,
    reextract,
)
from netmamba.dataset import build as build_module
from netmamba.dataset import extract as extract_module
from netmamba.debias import DebiasConfig
from netmamba.features import ARRAY_NAMES, FeatureConfig
from netmamba.flows import FlowConfig
from netmamba.labels import LabelConfig

S = 1_000_000_000
T0 = 1_650_000_000 * S
SMALL = FeatureConfig(n_packets=3, header_bytes=48, payload_bytes=32, seq_len=6)


def write_corpus(root, classes=("chat", "web"), files=3, sessions=4):
    """root/<class>/day<k>/cap<j>.pcap: TCP sessions whose payloads differ by class, file and
    session (no two samples identical), plus a DNS flow per file and a README."""
    for ci, name in enumerate(classes):
        for j in range(files):
            folder = root / name / f"day{j % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            sent = []
            for k in range(sessions):
                start = T0 + (ci * 100 + j * 10 + k) * S
                payload = f"{name}-{j}-{k}".encode() * 3
                sent += pg.tcp_session(
                    (f"10.{ci}.{j}.{k + 1}", 40000 + k),
                    ("192.0.2.1", 443 + ci),
                    [("client", payload), ("server", payload[::-1] * 2)],
                    start_ns=start,
                    gap_ns=S // 100,
                    handshake=False,  # with a handshake first, de-biased samples are identical
                )
            sent += pg.udp_flow(
                (f"10.{ci}.{j}.99", 5000),
                ("192.0.2.53", 53),
                [("client", b"dns?"), ("server", b"dns!")],
                start_ns=T0 + j * S,
            )
            pg.write_pcap(folder / f"cap{j}.pcap", pg.merge(pg.frames(sent)))
    (root / "README.txt").write_text("not a capture")
    return root


def config(**kw) -> PrepareConfig:
    cfg = PrepareConfig(
        flow=FlowConfig(mode="bidirectional"),
        features=SMALL,
        cleaning=CleaningConfig(min_per_class=1, max_per_class=None),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_prepare_writes_a_self_describing_dataset(corpus, tmp_path):
    out = tmp_path / "ds"
    result = prepare([corpus], out, config(), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["label_names"] == ["chat", "web"]
    assert manifest["flows_read"] == 2 * 3 * 5  # 4 TCP sessions + 1 DNS flow per file
    assert manifest["flows"] == 24
    assert manifest["dropped"] == {"protocol_filter": 6}  # the paper's filter: DNS
    assert manifest["captures"]["ignored_files"] == 1  # README.txt
    totals = {s: sum(manifest["counts"][s].values()) for s in SPLIT_NAMES}
    assert sum(totals.values()) == 24
    assert {s: manifest["splits"][s]["flows"] for s in SPLIT_NAMES} == totals
    assert PrepareConfig.from_dict(manifest["config"]) == config()
    assert manifest["arrays"]["bytes"] == {"dtype": "uint8", "shape": [SMALL.total_bytes]}
    assert not list(tmp_path.glob(".ds.tmp-*"))  # no temporary folder left
    text = result.summary()
    assert "chat" in text and "6 protocol_filter" in text and "ignored 1 files" in text


def test_loader_gives_the_model_arrays_labels_and_metadata(corpus, tmp_path):
    out = tmp_path / "ds"
    prepare([corpus], out, config(), progress=False)
    ds = load_dataset(out, "all")
    assert len(ds) == 24
    assert ds.arrays["bytes"].dtype == np.uint8 and ds.arrays["bytes"].shape == (24, 240)
    assert ds.arrays["seq_mask"].dtype == np.bool_
    assert set(ds.arrays) == set(ARRAY_NAMES)
    assert ds.labels.dtype == np.int64
    assert [ds.label_names[i] for i in ds.labels] == ds.meta["label"].tolist()
    m = ds.meta
    assert {
        "capture",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "protocol",
        "first_ns",
        "last_ns",
        "packets",
        "byte_count",
        "src_mac",
        "dst_mac",
        "label",
        "split",
        "session",
        "sample_hash",
    } <= set(m.columns)
    assert (m["packets"] == 2).all() and (m["protocol"] == 6).all()
    assert m["src_mac"].eq("02:00:00:00:00:01").all()
    # the client's address is kept in the metadata, while the bytes have it made relative
    assert m["src_ip"].str.startswith("10.").all()
    assert not ds.arrays["bytes"][:, 12:16].any()
    parts = [load_dataset(out, s) for s in SPLIT_NAMES]
    assert sum(len(p) for p in parts) == 24
    assert all((p.meta["split"] == s).all() for p, s in zip(parts, SPLIT_NAMES, strict=True))


def test_same_result_whatever_the_workers_the_shards_and_the_file_order(
    corpus, tmp_path, monkeypatch
):
    cfg = config(split=SplitConfig(strategy="flow", seed=3))
    a = prepare([corpus], tmp_path / "a", cfg, progress=False)
    b = prepare([corpus], tmp_path / "b", cfg, workers=2, progress=False)
    parts = [
        prepare([corpus], tmp_path / f"p{i}", cfg, shard=(i, 2), progress=False) for i in (1, 0)
    ]
    assert all(p.partial for p in parts)
    c = merge_partials([tmp_path / "p1", tmp_path / "p0"], tmp_path / "c")
    # a file system that lists folders and files in the opposite order
    walk = os.walk

    def reversed_walk(top, *args, **kwargs):
        for dirpath, dirnames, filenames in walk(top, *args, **kwargs):
            dirnames.reverse()
            yield dirpath, dirnames, filenames[::-1]

    monkeypatch.setattr(extract_module.os, "walk", reversed_walk)
    d = prepare([corpus], tmp_path / "d", cfg, progress=False)
    ref = load_dataset(a.output, "all")
    for other in (b, c):
        got = load_dataset(other.output, "all")
        for name in ARRAY_NAMES:
            assert np.array_equal(ref.arrays[name], got.arrays[name]), name
        pd.testing.assert_frame_equal(ref.meta, got.meta)
    got = load_dataset(d.output, "all")
    pd.testing.assert_frame_equal(ref.meta, got.meta)
    assert np.array_equal(got.arrays["bytes"], ref.arrays["bytes"])


def test_merge_refuses_missing_or_mismatched_shards(corpus, tmp_path):
    cfg = config()
    prepare([corpus], tmp_path / "p0", cfg, shard=(0, 2), progress=False)
    with pytest.raises(PrepareError, match=r"cover shards \[0\] of 2"):
        merge_partials([tmp_path / "p0"], tmp_path / "m")
    prepare(
        [corpus], tmp_path / "q1", config(features=FeatureConfig()), shard=(1, 2), progress=False
    )
    with pytest.raises(PrepareError, match="different config"):
        merge_partials([tmp_path / "p0", tmp_path / "q1"], tmp_path / "m")
    with pytest.raises(DatasetError, match="partial result of --shard"):
        load_dataset(tmp_path / "p0")


def test_class_cap_and_minimum_are_seeded_samples(tmp_path):
    corpus = write_corpus(tmp_path / "c", classes=("big", "small"), files=2, sessions=5)
    (corpus / "big" / "extra").mkdir()
    for i in range(2):
        sent = pg.tcp_session(
            (f"10.8.8.{i}", 1), ("10.9.9.9", 2), [("client", f"e{i}".encode())], start_ns=T0
        )
        pg.write_pcap(corpus / "big" / "extra" / f"e{i}.pcap", pg.frames(sent))
    cleaning = CleaningConfig(min_per_class=11, max_per_class=7)
    r1 = prepare([corpus], tmp_path / "a", config(cleaning=cleaning), progress=False)
    r2 = prepare([corpus], tmp_path / "b", config(cleaning=cleaning), progress=False)
    assert r1.manifest["label_names"] == ["big"]  # 12 flows; "small" has 10 < 11
    assert r1.manifest["dropped"]["class_below_min"] == 10
    assert r1.manifest["dropped"]["class_cap"] == 5 and r1.manifest["flows"] == 7
    a, b = load_dataset(r1.output, "all"), load_dataset(r2.output, "all")
    assert sorted(a.meta["sample_hash"]) == sorted(b.meta["sample_hash"])
    cfg3 = config(cleaning=cleaning, split=SplitConfig(seed=1))
    c = load_dataset(prepare([corpus], tmp_path / "c3", cfg3, progress=False).output, "all")
    assert sorted(c.meta["sample_hash"]) != sorted(a.meta["sample_hash"])


def test_unlabelled_dataset_for_pre_training(corpus, tmp_path):
    cfg = config(labels=LabelConfig(source="none"), cleaning=CleaningConfig(protocol_filter="none"))
    result = prepare([corpus], tmp_path / "u", cfg, progress=False)
    ds = load_dataset(result.output, "all")
    assert len(ds) == 30 and (ds.labels == -1).all() and ds.label_names == []
    assert ds.meta["label"].isna().all()
    assert "unlabelled flows" in result.summary()


def test_min_packets_and_protocol_filters(corpus, tmp_path):
    cfg = config(cleaning=CleaningConfig(min_packets=3, min_per_class=1))
    with pytest.raises(PrepareError, match=r"every flow was dropped \(dropped: 30 min_packets\)"):
        prepare([corpus], tmp_path / "x", cfg, progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))
    cfg = config(cleaning=CleaningConfig(protocol_filter="tcp_udp", min_per_class=1))
    assert prepare([corpus], tmp_path / "y", cfg, progress=False).manifest["flows"] == 30


def test_nothing_usable_is_an_error_that_says_why(tmp_path):
    junk = tmp_path / "junk"
    (junk / "cls").mkdir(parents=True)
    (junk / "cls" / "a.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 10)  # cut header
    (junk / "cls" / "b.pcapng").write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 40)  # corrupt
    with pytest.raises(PrepareError, match="no packets could be read from the 2 capture file"):
        prepare([junk], tmp_path / "out", config(), progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    sent = pg.tcp_session(("10.0.0.1", 1), ("10.0.0.2", 2), [("client", b"x")])
    pg.write_pcap(flat / "a.pcap", pg.frames(sent))
    with pytest.raises(PrepareError, match=r"no flow got a label.*--no-labels"):
        prepare([flat], tmp_path / "out", config(), progress=False)
    with pytest.raises(PrepareError, match="no such file or folder"):
        prepare([tmp_path / "missing"], tmp_path / "out", config(), progress=False)


def test_output_is_atomic_and_not_overwritten_by_accident(corpus, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare([corpus], out, config(), progress=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(PrepareError, match="already exists"):
        prepare([corpus], out, config(), progress=False)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "_build", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare([corpus], out, config(), overwrite=True, progress=False)
    assert (out / "manifest.json").read_text() == before  # the old dataset is untouched
    assert not list(tmp_path.glob(".ds.*"))


def test_bad_captures_are_counted_per_file_and_the_rest_is_used(corpus, tmp_path):
    mixed = tmp_path / "mixed"
    (mixed / "web").mkdir(parents=True)
    good = next((corpus / "web").rglob("*.pcap"))
    data = good.read_bytes()
    (mixed / "web" / "good.pcap").write_bytes(data)
    (mixed / "web" / "cut.pcap").write_bytes(data[: len(data) - 20])
    (mixed / "web" / "empty.pcap").write_bytes(b"")
    result = prepare([mixed], tmp_path / "out", config(), progress=False)
    reports = {
        r["path"].rsplit("/", 1)[1]: r
        for r in json.loads((result.output / "captures.json").read_text())
    }
    assert reports["empty.pcap"]["stats"]["error"] == "empty file"
    assert "truncated capture" in reports["cut.pcap"]["stats"]["error"]
    assert reports["good.pcap"]["stats"]["error"] is None
    assert result.manifest["captures"]["with_errors"] == 2
    assert result.manifest["flows"] > 0


def test_reextract_gives_the_same_flows_with_other_debiasing(corpus, tmp_path):
    out = tmp_path / "ds"
    prepare([corpus], out, config(), progress=False)
    ds = load_dataset(out, "test")
    none = reextract(out, "test", DebiasConfig.none())
    assert none["bytes"].shape == ds.arrays["bytes"].shape
    assert not np.array_equal(none["bytes"], ds.arrays["bytes"])
    # equal to extracting the same captures with de-biasing off, row for row
    fresh = extract_captures([corpus], FlowConfig(mode="bidirectional"), SMALL, DebiasConfig.none())
    by_key = {
        (c, f): i
        for i, (c, f) in enumerate(zip(fresh.meta["capture"], fresh.meta["first_ns"], strict=True))
    }
    rows = [by_key[(c, f)] for c, f in zip(ds.meta["capture"], ds.meta["first_ns"], strict=True)]
    assert np.array_equal(none["bytes"], fresh.arrays["bytes"][rows])
    again = ds.redebias(
        DebiasConfig(**json.loads((out / "manifest.json").read_text())["config"]["debias"])
    )
    assert np.array_equal(again["bytes"], ds.arrays["bytes"])
    raw_less = prepare([corpus], tmp_path / "nr", config(keep_raw_bytes=False), progress=False)
    with pytest.raises(DatasetError, match="without raw bytes"):
        reextract(raw_less.output, "test", DebiasConfig.none())


def test_extract_captures_lists_every_flow_in_memory(corpus):
    ex = extract_captures([corpus], FlowConfig(mode="bidirectional"), SMALL)
    assert len(ex) == 30 and len(ex.arrays["bytes"]) == 30  # DNS included: no cleaning
    assert ex.meta["label"].isna().all()
    assert [r.stats.packets for r in ex.reports] == [r.stats.packets for r in ex.reports if r]
    ex2 = extract_captures([corpus], FlowConfig(mode="bidirectional"), SMALL, workers=2)
    assert np.array_equal(ex.arrays["bytes"], ex2.arrays["bytes"])


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a netmamba dataset"):
        load_dataset(tmp_path)


def test_python_fallback_gives_the_same_samples_as_the_native_kernels(corpus, monkeypatch):
    from netmamba.capture import batch as batch_module

    if batch_module.native() is None:
        pytest.skip("native packet kernel not built")
    native_run = extract_captures([corpus], FlowConfig(mode="bidirectional"), SMALL, keep_raw=True)
    monkeypatch.setenv("NETMAMBA_NO_NATIVE", "packets")
    batch_module.reset_native()
    try:
        assert batch_module.native() is None
        python_run = extract_captures(
            [corpus], FlowConfig(mode="bidirectional"), SMALL, keep_raw=True
        )
    finally:
        monkeypatch.delenv("NETMAMBA_NO_NATIVE")
        batch_module.reset_native()
    for name, values in native_run.arrays.items():
        assert np.array_equal(values, python_run.arrays[name]), name
    pd.testing.assert_frame_equal(native_run.meta, python_run.meta)
