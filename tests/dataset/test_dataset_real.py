"""Real captures of ../shared/data (skipped when absent): a few of each link type found there
go through `prepare`, and the nDPI labels file labels some of their flows."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from netmamba.capture import CaptureError, open_capture
from netmamba.dataset import CleaningConfig, PrepareConfig, load_dataset, prepare
from netmamba.flows import FlowConfig
from netmamba.labels import LabelConfig

pytestmark = pytest.mark.shared_data

PER_LINK_TYPE = 2


def _by_link_type(folder):
    groups = defaultdict(list)
    for path in sorted(folder.iterdir()):
        try:
            with open_capture(path) as reader:
                next(reader.batches(max_packets=1), None)
                kinds = tuple(reader.stats.link_types) or (-1,)
        except CaptureError:
            continue
        groups[kinds[0]].append(path)
    return {k: sorted(v, key=lambda p: p.stat().st_size)[:PER_LINK_TYPE] for k, v in groups.items()}


def test_a_few_real_captures_of_each_link_type(shared_data, tmp_path):
    pcaps = shared_data / "ndpi-4.2" / "pcap"
    groups = _by_link_type(pcaps)
    assert {1, 113, 101} <= set(groups)  # Ethernet, Linux cooked, raw IP at least
    chosen = [p for paths in groups.values() for p in paths]
    iot = sorted((shared_data / "iot-sentinel" / "captures").glob("*/*.pcap"))[:2]
    config = PrepareConfig(
        flow=FlowConfig(mode="bidirectional"),
        labels=LabelConfig(source="none"),
        cleaning=CleaningConfig(protocol_filter="none"),
    )
    result = prepare([*chosen, *iot], tmp_path / "real", config, progress=False)
    reports = json.loads((result.output / "captures.json").read_text())
    assert len(reports) == len(chosen) + len(iot)
    flows_by_type = defaultdict(int)
    for r in reports:
        for t in r["stats"]["link_types"]:
            flows_by_type[t] += r["kept"]
    supported = {0, 1, 9, 101, 104, 113, 228}
    for t in set(groups) & supported:
        assert flows_by_type[t] > 0, f"no flow from link type {t}"
    ds = load_dataset(result.output, "all")
    assert len(ds) == result.manifest["flows"] > 0
    assert (ds.arrays["header_lens"][:, 0] >= 20).all()  # every flow has a real first packet


def test_ndpi_labels_file_labels_flows(shared_data, tmp_path):
    root = shared_data / "ndpi-4.2"
    captures = [root / "pcap" / n for n in ("1kxun.pcap", "443-chrome.pcap", "skype.pcap")]
    config = PrepareConfig(
        flow=FlowConfig(mode="bidirectional"),
        labels=LabelConfig(
            source="file",
            path=str(root / "labels-nfstream.tsv"),
            column="application_category_name",
            filters=["application_is_guessed=0"],
        ),
        cleaning=CleaningConfig(min_per_class=1, protocol_filter="none"),
    )
    result = prepare([c for c in captures if c.exists()], tmp_path / "ndpi", config, progress=False)
    assert result.manifest["flows"] > 10
    assert "Web" in result.manifest["label_names"]
