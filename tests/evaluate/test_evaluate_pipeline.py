"""`evaluate` and `audit` on prepared toy datasets: the outputs hold what they promise, and a
checkpoint that does not fit the dataset is refused with a message that says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from netmamba.dataset import CleaningConfig, PrepareConfig, SplitConfig, load_dataset, prepare
from netmamba.debias import DebiasConfig
from netmamba.evaluate.audit import audit, flipped, format_audit_table, write_audit
from netmamba.evaluate.metrics import classification_metrics
from netmamba.evaluate.run import EvaluationError, evaluate
from netmamba.features import FeatureConfig
from netmamba.flows import FlowConfig
from netmamba.inference import Predictor
from train import toydata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toydata.finetuned_run(tmp_path_factory)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toydata.toy_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(run, toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    unseen = toydata.unseen_dataset(tmp_path_factory)
    results = evaluate(run, toy, out, unknown=unseen, batch_sizes=(1, 4), throughput_seconds=0.05)
    return out, results


def variant_of_toy(root, name, classes=toydata.CLASSES, **changes):
    """The toy captures prepared with other settings (few sessions: these are refused)."""
    captures = toydata.write_captures(root / f"{name}-captures", 6, classes)
    config = PrepareConfig(
        features=changes.pop("features", toydata.GEOMETRY),
        cleaning=CleaningConfig(min_per_class=1, protocol_filter="tcp_udp"),
        split=SplitConfig(strategy="flow", ratios=(0.6, 0.2, 0.2)),
        **changes,
    )
    prepare([captures], root / name, config, progress=False)
    return root / name


def test_metrics_json_has_the_summary_at_the_top_and_every_section(evaluated, run, toy):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    test = load_dataset(toy, "test")
    predictor = Predictor.load(run, device="cpu")
    expected = classification_metrics(
        test.labels, predictor.predict(test.arrays)["label"], test.label_names
    )
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "weighted_recall"):
        assert metrics[key] == pytest.approx(expected[key])
    assert metrics["model"]["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["baseline"]["n"] == 30  # same test flows
    assert metrics["calibration"]["temperature"] > 0
    assert metrics["calibration"]["checkpoint_temperature"] == pytest.approx(predictor.temperature)
    assert [r["batch_size"] for r in metrics["throughput"]["results"]] == [1, 4]
    assert all(r["flows_per_s"] > 0 for r in metrics["throughput"]["results"])
    assert set(metrics["unknown"]["scores"]) == {"entropy", "max_softmax", "energy"}
    assert 0.0 <= metrics["unknown_auroc"] <= 1.0
    page = (out / "report.html").read_text()
    for section in (
        "Metrics",
        "Confusion matrix",
        "Calibration",
        "Unknown-class detection",
        "Inference throughput",
        "GBDT baseline",
        "Settings",
    ):
        assert section in page, section


def test_the_unknown_report_scores_the_unseen_flows(evaluated, tmp_path_factory):
    _, results = evaluated
    unseen = load_dataset(toydata.unseen_dataset(tmp_path_factory), "all")
    assert results["unknown"]["n_unknown"] == len(unseen)
    assert results["unknown"]["n_known"] == 30
    entropy = results["unknown"]["scores"]["entropy"]
    assert results["unknown_auroc"] == entropy["auroc"]
    assert 0.0 <= entropy["fpr_at_95_tpr"] <= 1.0


def test_a_dataset_with_classes_the_model_does_not_know_is_refused(run, tmp_path):
    other = variant_of_toy(tmp_path, "other", classes=("web", "game"))
    with pytest.raises(EvaluationError, match=r"classes the model was not trained on: game"):
        evaluate(run, other, tmp_path / "out", batch_sizes=None)


def test_a_subset_of_the_classes_is_mapped_by_name(run, tmp_path):
    subset = variant_of_toy(tmp_path, "subset", classes=("web", "chat"))
    results = evaluate(run, subset, tmp_path / "out", batch_sizes=None, baseline=None)
    assert results["model"]["classes"] == ["chat", "stream", "web"]
    support = {c["name"]: c["support"] for c in results["model"]["per_class"]}
    assert support["stream"] == 0 and support["web"] > 0 and support["chat"] > 0


def test_other_flow_modes_and_smaller_geometries_are_refused(run, tmp_path):
    sessions = variant_of_toy(tmp_path, "sessions", flow=FlowConfig(mode="bidirectional"))
    with pytest.raises(
        EvaluationError,
        match="holds bidirectional flows but the model was trained on unidirectional",
    ):
        evaluate(run, sessions, tmp_path / "out", batch_sizes=None)
    small = FeatureConfig(n_packets=3, header_bytes=24, payload_bytes=40, seq_len=10)
    narrow = variant_of_toy(tmp_path, "narrow", features=small)
    with pytest.raises(EvaluationError, match="cannot crop header_bytes from 24 up to 32"):
        evaluate(run, narrow, tmp_path / "out", batch_sizes=None)
    unlabelled = toydata.prepare_toy(tmp_path / "unlabelled", sessions=4, labelled=False)
    with pytest.raises(EvaluationError, match="no labels, so there is nothing to score"):
        evaluate(run, unlabelled, tmp_path / "out", batch_sizes=None)


def test_other_de_biasing_is_redone_from_raw_bytes_or_refused(run, tmp_path):
    raw = variant_of_toy(tmp_path, "raw", debias=DebiasConfig.none())
    results = evaluate(run, raw, tmp_path / "out", batch_sizes=None, baseline=None)
    assert "re-applied with the model's switches" in results["notes"]["de-biasing"]
    assert (
        "ip_addresses 'keep' in the data, 'relative' in training"
        in (results["notes"]["de-biasing"])
    )
    bare = variant_of_toy(tmp_path, "bare", debias=DebiasConfig.none(), keep_raw_bytes=False)
    with pytest.raises(EvaluationError, match="keeps no raw bytes to redo it"):
        evaluate(run, bare, tmp_path / "out2", batch_sizes=None)


def test_flipping_a_switch_removes_a_kept_field_and_restores_a_removed_one():
    base = DebiasConfig()
    assert flipped(base, "ports").ports == "keep"  # relative -> keep
    assert flipped(DebiasConfig.none(), "ports").ports == "zero"  # keep -> zero
    assert flipped(base, "checksums").checksums is False
    assert flipped(base, "tcp_window").tcp_window is True
    assert flipped(base, "ttl").to_dict() == {**base.to_dict(), "ttl": False}


def test_the_audit_scores_every_switch_and_every_input(run, toy, tmp_path, evaluated):
    result = audit(run, toy)
    conditions = [r["condition"] for r in result["rows"]]
    assert conditions[0] == "as trained"
    assert len([c for c in conditions if c.startswith("debias:")]) == 12
    assert conditions[-5:] == [
        "blank:sizes",
        "blank:iats",
        "blank:bytes",
        "blank:header bytes",
        "blank:payload bytes",
    ]
    first = result["rows"][0]
    assert first["accuracy"] == pytest.approx(evaluated[1]["accuracy"])  # as evaluate scores
    for row in result["rows"]:
        assert row["accuracy_drop"] == pytest.approx(first["accuracy"] - row["accuracy"])
        assert "baseline" in row
    # the toy classes differ most in their sizes: blanking them costs the model
    blank_sizes = next(r for r in result["rows"] if r["condition"] == "blank:sizes")
    assert blank_sizes["accuracy"] <= first["accuracy"]
    table = format_audit_table(result)
    assert table.splitlines()[0].split()[:3] == ["condition", "accuracy", "change"]
    metrics, report = write_audit(tmp_path / "audit", result)
    assert json.loads(metrics.read_text())["audit"]["rows"][0]["condition"] == "as trained"
    assert "debias:tls_sni" in report.read_text()


def test_blanking_replaces_values_and_keeps_lengths_and_masks():
    from netmamba.evaluate.audit import _blank

    geometry = FeatureConfig(n_packets=2, header_bytes=4, payload_bytes=2, seq_len=3)
    arrays = {
        "bytes": np.arange(1, 13, dtype=np.uint8)[None],  # packet 0: 1..6, packet 1: 7..12
        "header_lens": np.array([[4, 4]], np.uint16),
        "payload_lens": np.array([[2, 1]], np.uint16),
        "sizes": np.array([[60, 70, 0]], np.int16),
        "iats": np.array([[0.0, 0.5, 0.0]], np.float32),
        "seq_mask": np.array([[True, True, False]]),
    }
    header = _blank(arrays, "header bytes", geometry)
    assert header["bytes"].tolist() == [[0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 11, 12]]
    payload = _blank(arrays, "payload bytes", geometry)
    assert payload["bytes"].tolist() == [[1, 2, 3, 4, 0, 0, 7, 8, 9, 10, 0, 0]]
    sizes = _blank(arrays, "sizes", geometry)
    assert sizes["sizes"].tolist() == [[0, 0, 0]] and sizes["seq_mask"] is arrays["seq_mask"]
    assert sizes["header_lens"] is arrays["header_lens"]
    assert arrays["bytes"][0, 0] == 1  # the input is left as it was
