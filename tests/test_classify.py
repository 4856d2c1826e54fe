"""`netmamba classify`: every flow of a capture, one row each, the same from the CLI and the API;
output files that parse; clear errors for corrupt captures; short flows listed, never dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import netmamba
from netmamba.classify import RESULT_COLUMNS, classify_captures, load_predictor, write_result
from netmamba.cli import main
from netmamba.dataset import extract_captures
from train import toydata

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "example.pcap"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model fine-tuned on the toy classes (web, stream, chat) with the real trainer."""
    return toydata.finetuned_run(tmp_path_factory) / "best"


@pytest.fixture(scope="module")
def toy_captures(tmp_path_factory) -> Path:
    return toydata.write_captures(tmp_path_factory.mktemp("caps"), sessions=6, files=1)


def _flow_count(captures: list[Path], model: Path) -> int:
    predictor = load_predictor(model)
    return len(extract_captures(captures, predictor.flow, predictor.data_features).meta)


def test_every_flow_of_the_capture_gets_one_row(model, toy_captures):
    result = classify_captures([toy_captures], model)
    assert list(result.flows.columns) == list(RESULT_COLUMNS)
    assert len(result.flows) == _flow_count([toy_captures], model)
    assert set(result.flows["label"].dropna()) <= {"web", "stream", "chat"}
    assert (result.flows["status"] == "ok").all()
    probs = result.flows[["confidence", "confidence_2", "confidence_3"]].to_numpy()
    assert np.all(probs[:, 0] >= probs[:, 1]) and np.all(probs[:, 1] >= probs[:, 2])


def test_model_given_by_path_classifies_its_own_classes_correctly(model, toy_captures):
    flows = classify_captures([toy_captures], model).flows
    truth = flows["capture"].map(lambda p: Path(p).parent.name)
    # the toy classes are separable; the tiny model learned them (test accuracy >= 0.9)
    assert (flows["label"] == truth).mean() >= 0.9


def test_cli_and_api_give_the_same_predictions(model, toy_captures, tmp_path, capsys):
    out = tmp_path / "flows.csv"
    status = main(["classify", str(toy_captures), "--model", str(model), "-o", str(out), "-q"])
    assert status == 0
    from_cli = pd.read_csv(out)
    from_api = netmamba.classify_captures([toy_captures], str(model)).flows
    assert list(from_cli["label"]) == list(from_api["label"])
    assert np.allclose(from_cli["confidence"], from_api["confidence"], atol=1e-6)
    assert list(from_cli["src_port"]) == list(from_api["src_port"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_output_files_parse_and_hold_every_flow(model, suffix, tmp_path):
    result = classify_captures([EXAMPLE], model)
    path = tmp_path / f"flows{suffix}"
    write_result(result.flows, path)
    if suffix == ".csv":
        back = pd.read_csv(path)
    elif suffix == ".jsonl":
        back = pd.read_json(path, lines=True)
    else:
        back = pd.read_parquet(path)
    assert len(back) == len(result.flows) == _flow_count([EXAMPLE], model)
    assert list(back.columns) == list(RESULT_COLUMNS)
    assert list(back["dst_port"]) == list(result.flows["dst_port"])
    assert not path.with_name(f".{path.name}.tmp").exists()


def test_terminal_table_lists_the_flows(model, capsys):
    status = main(["classify", str(EXAMPLE), "--model", str(model), "-q"])
    out = capsys.readouterr().out
    assert status == 0
    assert "10.77.0.2:8443" in out  # the HTTPS server of the example capture
    assert "[fd77::2]:8080" in out  # its IPv6 web server


def test_flows_shorter_than_the_training_data_are_listed_without_a_label(model, tmp_path):
    # a copy of the model whose training data kept only flows of 3+ packets
    short_model = tmp_path / "model"
    shutil.copytree(model, short_model)
    meta_path = short_model / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["cleaning"] = {**meta.get("cleaning", {}), "min_packets": 3, "protocol_filter": "none"}
    meta_path.write_text(json.dumps(meta))
    flows = classify_captures([EXAMPLE], short_model).flows
    short = flows["packets"] < 3
    assert short.any() and (~short).any()
    assert (flows.loc[short, "status"] == "too_short").all()
    assert flows.loc[short, "label"].isna().all()
    assert flows.loc[~short, "label"].notna().all()
    every = classify_captures([EXAMPLE], short_model, include_short=True).flows
    assert every["label"].notna().all() and len(every) == len(flows)


def test_flows_of_protocols_the_training_data_left_out_are_listed_without_a_label(model, tmp_path):
    # a copy of the model whose training data kept TCP and UDP only (the default model's)
    tcp_udp_model = tmp_path / "model"
    shutil.copytree(model, tcp_udp_model)
    meta_path = tcp_udp_model / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["cleaning"] = {**meta.get("cleaning", {}), "protocol_filter": "tcp_udp", "min_packets": 1}
    meta_path.write_text(json.dumps(meta))
    flows = classify_captures([EXAMPLE], tcp_udp_model).flows
    other = ~flows["protocol"].isin([6, 17])
    assert set(flows.loc[other, "protocol"]) == {58}  # the capture's ICMPv6 flows
    assert (flows.loc[other, "status"] == "other_protocol").all()
    assert flows.loc[other, "label"].isna().all()
    assert (flows.loc[~other, "status"] == "ok").all() and flows.loc[~other, "label"].notna().all()
    # the paper's filter also leaves out DNS, mDNS, NTP, ... by port (the capture's 5353 flows)
    meta["cleaning"]["protocol_filter"] = "paper"
    meta_path.write_text(json.dumps(meta))
    paper = classify_captures([EXAMPLE], tcp_udp_model).flows
    mdns = (paper["src_port"] == 5353) | (paper["dst_port"] == 5353)
    assert mdns.any() and (paper.loc[mdns, "status"] == "other_protocol").all()
    every = classify_captures([EXAMPLE], tcp_udp_model, include_short=True).flows
    assert every["label"].notna().all() and len(every) == len(flows)


def test_a_corrupt_capture_is_a_clear_error_with_exit_status(model, tmp_path, capsys):
    bad = tmp_path / "garbage.pcap"
    bad.write_bytes(b"this is not a capture file at all" * 10)
    status = main(["classify", str(bad), "--model", str(model), "-q"])
    err = capsys.readouterr().err
    assert status == 1
    assert "garbage.pcap" in err and "error" in err


def test_a_partly_corrupt_capture_gives_what_was_read_and_a_warning(model, tmp_path, capsys):
    data = EXAMPLE.read_bytes()
    damaged = tmp_path / "damaged.pcap"
    cut = len(data) // 2
    # keep the first half, then a record header claiming an impossible length
    damaged.write_bytes(data[:cut] + b"\x00" * 8 + b"\xff\xff\xff\x7f" * 2 + b"\x00" * 64)
    whole = classify_captures([EXAMPLE], model).flows
    status = main(["classify", str(damaged), "--model", str(model), "-o", str(tmp_path / "d.csv")])
    err = capsys.readouterr().err
    assert status == 0
    assert "warning" in err and "damaged.pcap" in err
    partial = pd.read_csv(tmp_path / "d.csv")
    assert 0 < len(partial) <= len(whole)


def test_unknown_model_name_is_a_clear_error(capsys):
    status = main(["classify", str(EXAMPLE), "--model", "no-such-model", "-q"])
    assert status == 2
    assert "no such model" in capsys.readouterr().err


def test_unknown_output_extension_is_refused_before_any_work(model, capsys):
    status = main(["classify", str(EXAMPLE), "--model", str(model), "-o", "flows.xlsx"])
    assert status == 2
    assert ".csv" in capsys.readouterr().err


def test_prepared_arrays_classify_like_the_capture(model, toy_captures):
    predictor = netmamba.load_model(model)
    extraction = extract_captures([toy_captures], predictor.flow, predictor.data_features)
    out = predictor.predict(extraction.arrays)
    flows = netmamba.classify_captures([toy_captures], predictor).flows
    assert list(np.asarray(predictor.label_names)[out["label"]]) == list(flows["label"])
