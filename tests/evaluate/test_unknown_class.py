"""Unknown-class scores, AUROC and FPR at 95% TPR against scikit-learn, and the threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from netmamba.config import ConfigError
from netmamba.evaluate.ood import (
    UnknownDetector,
    auroc,
    fit_threshold,
    fpr_at_tpr,
    roc_curve,
    unknown_class_report,
    unknown_scores,
)


def test_scores_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    entropy = unknown_scores(logits, "entropy")
    assert entropy == pytest.approx([math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert unknown_scores(logits, "max_softmax") == pytest.approx([0.5, 0.25])
    assert unknown_scores(logits, "energy") == pytest.approx([-math.log(2), -math.log(4)])
    # temperature 2: energy = -2 log(exp(z1 / 2) + exp(z2 / 2))
    assert unknown_scores(logits, "energy", 2.0)[1] == pytest.approx(
        -2 * math.log(math.sqrt(3) + 1)
    )
    # a higher temperature flattens the softmax, so the entropy grows
    assert unknown_scores(logits, "entropy", 5.0)[1] > entropy[1]


def _two_populations(seed, ties=False):
    rng = np.random.default_rng(seed)
    known = rng.normal(0.0, 1.0, 400)
    unknown = rng.normal(1.2, 1.0, 150)
    if ties:
        known, unknown = np.round(known), np.round(unknown)
    return known, unknown


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, True), (3, True)])
def test_auroc_and_fpr_at_95_tpr_agree_with_scikit_learn(seed, ties):
    known, unknown = _two_populations(seed, ties)
    # scikit-learn with known = positive, scored by "knownness" = -unknown score
    y = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    knownness = -np.r_[known, unknown]
    assert auroc(known, unknown) == pytest.approx(roc_auc_score(y, knownness), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, knownness, drop_intermediate=False)
    expected = fpr[np.argmax(tpr >= 0.95)]
    assert fpr_at_tpr(known, unknown, 0.95) == pytest.approx(expected, abs=1e-12)
    ours_fpr, ours_tpr, _ = roc_curve(known, unknown)
    assert np.trapezoid(ours_tpr, ours_fpr) == pytest.approx(auroc(known, unknown), abs=1e-12)


def test_perfect_and_useless_detectors():
    assert auroc([0.1, 0.2], [0.5, 0.9]) == 1.0
    assert fpr_at_tpr([0.1, 0.2], [0.5, 0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5]) == 0.5


def test_threshold_accepts_95_percent_of_known_validation_flows():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    assert fit_threshold(scores, 0.95) == 95.0  # 95 of 100 accepted (score <= 95)
    assert fit_threshold(np.arange(1, 21, dtype=float), 0.95) == 19.0
    assert fit_threshold([3.0], 0.95) == 3.0
    with pytest.raises(ValueError, match="accept_rate"):
        fit_threshold(scores, 0.0)


def test_detector_flags_flows_above_the_validation_threshold_and_round_trips():
    rng = np.random.default_rng(0)
    confident = np.c_[rng.normal(6, 1, 200), rng.normal(0, 1, (200, 3))]
    detector = UnknownDetector.fit(confident, "entropy", temperature=1.5)
    assert np.mean(~detector.is_unknown(confident)) >= 0.95
    flat = np.zeros((3, 4))  # maximal entropy
    assert detector.is_unknown(flat).all()
    again = UnknownDetector.from_json(detector.to_json())
    assert again == detector
    assert not UnknownDetector().is_unknown(flat).any()  # no threshold: never flags
    with pytest.raises(ConfigError, match="score must be one of"):
        UnknownDetector(score="mahalanobis")


def test_unknown_class_report_separates_confident_known_from_flat_unknown():
    rng = np.random.default_rng(1)

    def known(n):
        cls = rng.integers(0, 4, n)
        z = rng.normal(0, 1, (n, 4))
        z[np.arange(n), cls] += 5
        return z

    unknown = rng.normal(0, 1, (300, 4))
    report = unknown_class_report(known(500), known(500), unknown, temperature=1.0)
    assert set(report["scores"]) == {"entropy", "max_softmax", "energy"}
    entropy = report["scores"]["entropy"]
    assert entropy["auroc"] > 0.9 and entropy["fpr_at_95_tpr"] < 0.3
    assert 0.9 < entropy["known_accepted"] <= 1.0
    hist = entropy["histogram"]
    assert sum(hist["known"]) == 500 and sum(hist["unknown"]) == 300
