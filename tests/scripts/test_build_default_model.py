"""scripts/build_default_model.py: which nDPI categories the default model learns, its labels
file, and the installed files with their checksums."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling real_data_check
spec = importlib.util.spec_from_file_location(
    "build_default_model", SCRIPTS / "build_default_model.py"
)
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def fake_dataset(per_category: dict[str, dict[str, int]]) -> SimpleNamespace:
    """{category: {capture file: flows}} -> what choose_categories reads of a dataset."""
    names = sorted(per_category)
    labels, captures = [], []
    for i, name in enumerate(names):
        for capture, n in per_category[name].items():
            labels += [i] * n
            captures += [capture] * n
    return SimpleNamespace(
        labels=np.array(labels), label_names=names, meta=pd.DataFrame({"capture": captures})
    )


def test_a_category_needs_flows_files_and_flows_outside_its_largest_file(monkeypatch):
    spread = {f"f{i}.pcap": 8 for i in range(6)}  # 48 flows in 6 files, 40 outside the largest
    one_big = {"big.pcap": 100, **{f"g{i}.pcap": 1 for i in range(5)}}  # 5 outside
    few_files = {f"h{i}.pcap": 20 for i in range(5)}  # 5 files only
    too_few = {f"k{i}.pcap": 6 for i in range(6)}  # 36 flows
    data = fake_dataset({"Web": spread, "Game": one_big, "VPN": few_files, "Mail": too_few})
    monkeypatch.setattr("netmamba.dataset.load_dataset", lambda *a, **k: data)
    kept, rows = build.choose_categories(Path("unused"))
    assert kept == ["Web"]
    by_name = {r["category"]: r for r in rows}
    assert by_name["Game"] == {
        "category": "Game",
        "flows": 105,
        "files": 6,
        "outside": 5,
        "kept": False,
    }
    assert by_name["Web"]["outside"] == 40 and by_name["VPN"]["files"] == 5
    assert [r["category"] for r in rows] == ["Game", "VPN", "Web", "Mail"]  # most flows first


def test_labels_file_keeps_the_rows_of_kept_categories_only(tmp_path):
    source = tmp_path / "labels.tsv"
    rows = [
        {"src_ip": "10.0.0.1", "application_category_name": "Web", "application_is_guessed": "0"},
        {"src_ip": "10.0.0.2", "application_category_name": "Game", "application_is_guessed": "0"},
        {"src_ip": "10.0.0.3", "application_category_name": "Chat", "application_is_guessed": "1"},
    ]
    with open(source, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    target = tmp_path / "kept.tsv"
    assert build.write_labels(source, target, ["Chat", "Web"]) == 2
    with open(target, newline="") as f:
        assert list(csv.DictReader(f, delimiter="\t")) == [rows[0], rows[2]]


def test_install_names_the_model_and_records_checksums(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.safetensors").write_bytes(b"weights")
    meta = {
        "kind": "classifier",
        "dataset": {"path": "/tmp/x/data", "created": "2026-12-05T01:18:38Z"},
        "init": {"kind": "pretrained", "source": "/tmp/x/runs/pretrain/checkpoint"},
        "label_names": ["Web"],
    }
    (best / "checkpoint.json").write_text(json.dumps(meta))
    target = tmp_path / "default_model"
    build.install(best, target)
    installed = json.loads((target / "checkpoint.json").read_text())
    assert installed["name"] == "default" and installed["description"] == build.DESCRIPTION
    # nothing of the build machine or time, so that a rebuild gives the same checksums
    assert "/tmp" not in json.dumps(installed) and "created" not in installed["dataset"]
    for line in (target / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest
