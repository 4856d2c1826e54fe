"""The report is one valid offline HTML file with every class, metric and section in it."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest

from netmamba.evaluate.baseline import BaselineConfig
from netmamba.evaluate.calibration import calibration_report
from netmamba.evaluate.metrics import SUMMARY_KEYS, classification_metrics
from netmamba.evaluate.ood import unknown_class_report
from netmamba.evaluate.report import (
    data_summary,
    read_metrics_json,
    render_report,
    write_metrics_json,
    write_report,
)
from netmamba.train.loss import LossConfig
from netmamba.train.optim import OptimConfig

CLASSES = [
    "Web",
    "Streaming",
    "Chat",
    "VoIP",
    "Cloud",
    "Email",
    "SocialNetwork",
    "Download-FileTransfer-FileSharing",
    'A&B <quoted> "class"',
]
VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "circle", "polyline", "path"}


class PageParser(HTMLParser):
    """Collects text, attributes and checks that every opened element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def fake_evaluation(seed: int = 0) -> dict:
    """Plausible numbers: a long-tailed test split, a model at ~0.9 and a baseline at ~0.8."""
    rng = np.random.default_rng(seed)
    counts = [900, 420, 260, 180, 120, 80, 60, 30, 12]
    y = np.repeat(np.arange(len(CLASSES)), counts)

    def predict(skill):
        wrong = rng.random(y.size) > skill
        neighbour = (y + rng.choice([1, 2, -1], y.size)) % len(CLASSES)
        return np.where(wrong, neighbour, y)

    model = classification_metrics(y, predict(0.9), CLASSES)
    baseline = classification_metrics(y, predict(0.8), CLASSES)

    def logits(n, sharp):
        cls = rng.integers(0, len(CLASSES), n)
        z = rng.normal(0, 1, (n, len(CLASSES)))
        z[np.arange(n), cls] += 2.5
        return z * sharp, cls

    val, val_y = logits(1500, 2.2)
    test, test_y = logits(1500, 2.2)
    calibration = calibration_report(val, val_y, test, test_y)
    unknown = unknown_class_report(
        val, test, rng.normal(0, 1.2, (400, len(CLASSES))), calibration["temperature"]
    )
    epochs = np.arange(1, 31)
    history = [
        {
            "epoch": int(e),
            "train_loss": 2.2 * math.exp(-e / 8) + 0.25,
            "valid_loss": 2.0 * math.exp(-e / 9) + 0.35 + 0.004 * max(0, e - 22),
            "valid_macro_f1": 0.86 * (1 - math.exp(-e / 6)),
            "valid_accuracy": 0.9 * (1 - math.exp(-e / 5)),
            "lr": 1e-3,
        }
        for e in epochs
    ]
    throughput = {
        "device": "cpu",
        "device_name": "cpu",
        "threads": 2,
        "autocast_dtype": None,
        "memory_method": "VmHWM reset via /proc/self/clear_refs after malloc_trim",
        "parameters": {"total": 1870848, "trainable": 1870848},
        "results": [
            {
                "batch_size": b,
                "flows_per_s": f,
                "batch_ms": 1000 * b / f,
                "iters": 10,
                "peak_memory_mb": m,
                "peak_total_mb": 400 + m,
            }
            for b, f, m in [(1, 41.0, 3.1), (16, 230.0, 44.0), (64, 260.0, 170.0)]
        ],
    }
    splits = {
        s: np.repeat(np.arange(len(CLASSES)), [c * k for c in counts])
        for s, k in (("train", 8), ("valid", 1), ("test", 1))
    }
    return {
        "results": {"NetMamba+": model, "gradient-boosted trees": baseline},
        "history": history,
        "best_epoch": 24,
        "calibration": calibration,
        "unknown": unknown,
        "throughput": throughput,
        "data": data_summary(CLASSES, splits, {"split": "grouped by capture file", "seed": 0}),
        "config": {
            "loss": LossConfig(reweight_from_epoch=20).to_dict(),
            "optim": OptimConfig().to_dict(),
            "baseline": BaselineConfig().to_dict(),
        },
    }


@pytest.fixture(scope="module")
def page() -> tuple[str, dict]:
    fake = fake_evaluation()
    return render_report(title="Report layout check", subtitle="synthetic numbers", **fake), fake


def test_report_parses_and_every_element_is_closed(page):
    html, _ = page
    parser = PageParser()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    # metric bars, F1 bars, heat-map, 2 learning curves, reliability diagram, score histogram
    assert parser.tags.count("svg") == 8  # and the throughput bars


def test_report_has_every_class_name_and_metric_value(page):
    html, fake = page
    parser = PageParser()
    parser.feed(html)
    text = "".join(parser.text)
    for name in CLASSES:
        assert name in text, name
    assert '<quoted> "class"' not in html  # escaped in the source, unescaped in the text
    for result in fake["results"].values():
        for key in SUMMARY_KEYS:
            assert f"{result[key]:.4f}" in text, key
    assert f"{fake['calibration']['ece_after']:.4f}" in text
    assert f"{fake['unknown']['scores']['entropy']['auroc']:.4f}" in text
    for section in (
        "Metrics",
        "F1 per class",
        "Confusion matrix",
        "Learning curves",
        "Calibration",
        "Unknown-class detection",
        "Inference throughput",
        "Data",
        "Settings",
    ):
        assert section in text, section
    assert '"reweight_from_epoch": 20' in text  # the configuration is shown


def test_report_fetches_nothing(page):
    html, _ = page
    parser = PageParser()
    parser.feed(html)
    assert "://" not in html and "url(" not in html and "@import" not in html
    assert not {"script", "link", "img", "iframe", "object"} & set(parser.tags)
    for tag, attr, value in parser.attrs:
        if attr in ("src", "href", "xlink:href", "action"):
            assert value and value.startswith("#"), (tag, attr, value)


def test_confusion_cells_carry_counts_and_sections_are_optional():
    m = classification_metrics([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["tls", "quic"])
    html = render_report({"model": m})
    assert "true tls → predicted quic: 1 (50.0% of the row)" in html
    assert "Learning curves" not in html and "Calibration" not in html
    with pytest.raises(ValueError, match="at least one result"):
        render_report({})


def test_metrics_json_round_trips_numpy_values_and_nan(tmp_path):
    metrics = {
        "accuracy": np.float32(0.5),
        "n": np.int64(4),
        "cm": np.eye(2, dtype=int),
        "ece": float("nan"),
        "flag": np.bool_(True),
    }
    path = write_metrics_json(tmp_path, metrics)
    assert path == tmp_path / "metrics.json"
    assert read_metrics_json(tmp_path) == {
        "accuracy": 0.5,
        "n": 4,
        "cm": [[1, 0], [0, 1]],
        "ece": None,
        "flag": True,
    }
    assert json.loads(path.read_text())["n"] == 4
    assert not list(tmp_path.glob(".metrics.json.*"))  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        read_metrics_json(tmp_path / "missing")


def test_render_a_full_report_for_people_to_look_at(artifacts_dir):
    fake = fake_evaluation(seed=1)
    out = write_report(
        artifacts_dir / "report-example.html",
        title="NetMamba+ · nDPI categories (example with synthetic numbers)",
        subtitle="checkpoint runs/ndpi-fast/best · dataset data/ndpi · test split",
        **fake,
    )
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "NetMamba+" in html
    assert out.stat().st_size < 400_000
