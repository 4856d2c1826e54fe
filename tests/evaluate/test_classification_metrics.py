"""Metrics agree with scikit-learn, by hand on a small case, and with classes absent from test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from netmamba.evaluate.metrics import (
    SUMMARY_KEYS,
    classification_metrics,
    confusion_matrix,
    format_metrics_table,
    metrics_from_logits,
)


def _sklearn(y_true, y_pred):
    out = {"accuracy": skm.accuracy_score(y_true, y_pred)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=avg, zero_division=0
        )
        out.update({f"{avg}_precision": p, f"{avg}_recall": r, f"{avg}_f1": f})
    return out


def test_small_case_by_hand():
    # truth 0 0 0 1 1 2, prediction 0 0 1 1 2 2
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["web", "mail", "dns"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision 2/2, 1/2, 1/2; recall 2/3, 1/2, 1/1; f1 0.8, 0.5, 2/3
    f1 = [0.8, 0.5, 2 / 3]
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert [c["support"] for c in m["per_class"]] == [3, 2, 1]
    assert [c["name"] for c in m["per_class"]] == ["web", "mail", "dns"]


@pytest.mark.parametrize("seed", range(5))
def test_summary_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 6, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 6, 300))
    ours = classification_metrics(y_true, y_pred, num_classes=6)
    for key, value in _sklearn(y_true, y_pred).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()


def test_classes_absent_from_the_test_split_do_not_count_as_zero():
    # 5 classes; class 3 never occurs and is never predicted; class 4 is only (wrongly) predicted
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 4, 2, 2, 1])
    ours = classification_metrics(y_true, y_pred, [f"c{i}" for i in range(5)])
    for key, value in _sklearn(y_true, y_pred).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert len(ours["confusion_matrix"]) == 5 and ours["per_class"][3]["support"] == 0
    assert ours["per_class"][4]["precision"] == 0.0


def test_unlabelled_flows_are_left_out_and_counted():
    m = classification_metrics([0, -1, 1, -1], [0, 1, 1, 0], num_classes=2)
    assert m["n"] == 2 and m["n_unlabelled"] == 2 and m["accuracy"] == 1.0


def test_metrics_from_logits_uses_argmax_over_all_classes():
    logits = np.array([[2.0, 0.1, 0.0, 0.0], [0.0, 0.1, 3.0, 0.0]])
    m = metrics_from_logits(logits, [0, 1])
    assert m["confusion_matrix"][1] == [0, 0, 1, 0] and m["accuracy"] == 0.5


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"y_true must be in 0\.\.2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="4 flows but y_pred has 3"):
        classification_metrics([0, 1, 1, 0], [0, 1, 1])
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0.5], [0])


def test_text_table_has_one_column_per_result():
    a = classification_metrics([0, 1, 1], [0, 1, 0], num_classes=2)
    b = classification_metrics([0, 1, 1], [0, 1, 1], num_classes=2)
    table = format_metrics_table({"netmamba": a, "baseline": b})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "netmamba", "baseline"]
    assert len(lines) == 1 + len(SUMMARY_KEYS)
    assert lines[1].split() == ["accuracy", f"{2 / 3:.4f}", "1.0000"]
