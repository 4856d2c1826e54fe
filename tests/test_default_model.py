"""The built-in default model shipped in the package: its files match their recorded checksums,
its metadata says what it is, its card covers its labels, and it classifies the example capture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from netmamba.classify import classify_captures
from netmamba.registry import BUILTIN_MODELS, DEFAULT_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[1]
FOLDER = BUILTIN_MODELS[DEFAULT_MODEL]


def _sums() -> dict[str, str]:
    """SHA256SUMS (`sha256sum` format: digest, two spaces, name) -> {name: digest}."""
    sums = {}
    for line in (FOLDER / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        assert len(digest) == 64 and name, f"malformed SHA256SUMS line {line!r}"
        sums[name] = digest
    return sums


def test_default_model_files_match_their_recorded_checksums():
    sums = _sums()
    assert set(sums) == {"checkpoint.json", "model.safetensors"}
    for name, digest in sums.items():
        got = hashlib.sha256((FOLDER / name).read_bytes()).hexdigest()
        assert got == digest, f"{name} does not match SHA256SUMS: rebuild or re-record it"


def test_default_model_is_the_fast_model_on_debiased_sessions():
    assert resolve_model("default") == FOLDER
    meta = json.loads((FOLDER / "checkpoint.json").read_text())
    assert meta["name"] == "default" and meta["kind"] == "classifier"
    model = meta["model"]
    assert (model["d_model"], model["depth"], model["header_bytes"], model["payload_bytes"]) == (
        64,
        3,
        64,
        64,
    )
    assert meta["flow"]["mode"] == "bidirectional"
    assert meta["debias"]["ip_addresses"] != "off" and meta["debias"]["ports"] != "off"
    assert meta["debias"]["tls_sni"] is True
    assert "Unspecified" not in meta["label_names"] and len(meta["label_names"]) >= 4
    assert (FOLDER / "model.safetensors").stat().st_size < 5_000_000  # "a few MB" at most


def test_model_card_reports_every_label_and_the_baseline():
    card = (FOLDER / "MODEL_CARD.md").read_text()
    meta = json.loads((FOLDER / "checkpoint.json").read_text())
    for name in meta["label_names"]:
        assert f"| {name} |" in card, f"label {name} missing from the model card"
    assert "gradient-boosted trees" in card and "grouped by capture file" in card


@pytest.mark.usefixtures("one_torch_thread")
def test_default_model_classifies_every_flow_of_the_example_capture():
    meta = json.loads((FOLDER / "checkpoint.json").read_text())
    flows = classify_captures([REPO / "examples" / "example.pcap"]).flows
    assert len(flows) >= 20
    ok = flows[flows["status"] == "ok"]
    assert len(ok) > 0 and set(ok["label"]) <= set(meta["label_names"])
    assert ok["confidence"].between(0, 1).all()
