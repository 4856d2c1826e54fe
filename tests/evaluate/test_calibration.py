"""Temperature scaling finds the NLL minimum; ECE and reliability bins by hand."""

from __future__ import annotations

import numpy as np
import pytest

from netmamba.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    softmax,
)


def _overconfident(n=20000, classes=5, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports z * sharpen (too confident by T = 3)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, classes))
    p = softmax(z)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return z * sharpen, labels


def test_fitted_temperature_undoes_a_known_overconfidence():
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    assert nll(logits, labels, temperature) < nll(logits, labels) - 0.1


def test_fitted_temperature_is_the_minimum_of_a_fine_grid():
    logits, labels = _overconfident(n=2000, sharpen=0.5, seed=1)  # under-confident: T < 1
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([nll(logits, labels, t) for t in grid])]
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(best, rel=2e-3)
    assert temperature < 1.0


def test_ece_by_hand_with_equal_width_bins():
    # 4 bins of width 0.25; confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1])
    # bins: (0.5, 0.75] holds 0.6 (right) and 0.7 (right): |1 - 0.65| * 2 / 4 = 0.175
    #       (0.75, 1.0] holds 0.9 (right) and 0.8 (wrong): |0.5 - 0.85| * 2 / 4 = 0.175
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.35)
    bins = reliability(probs, labels, n_bins=4)
    assert bins["count"] == [0, 0, 2, 2]
    assert bins["accuracy"] == [None, None, 1.0, 0.5]
    assert bins["confidence"][2:] == pytest.approx([0.65, 0.85])


def test_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    bins = reliability(probs, np.array([0, 0]), n_bins=4)
    assert bins["count"] == [0, 1, 1, 0]  # 0.5 in (0.25, 0.5], 0.75 in (0.5, 0.75]


def test_calibration_report_fits_on_valid_and_improves_test():
    logits, labels = _overconfident(n=8000, seed=3)
    report = calibration_report(logits[:4000], labels[:4000], logits[4000:], labels[4000:])
    assert report["temperature"] == pytest.approx(3.0, rel=0.1)
    assert report["ece_after"] < report["ece_before"] / 2
    assert report["nll_after"] < report["nll_before"]
    assert sum(report["reliability_after"]["count"]) == 4000


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="logits must be"):
        fit_temperature(np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"labels must be \(3,\)"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        nll(np.zeros((2, 2)), np.array([0, 2]))
