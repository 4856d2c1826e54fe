"""Temperature scaling and expected calibration error (SPEC §6).

    p(x; T)  = softmax(z(x) / T)                 one temperature T > 0 for all classes
    T*       = argmin_T  mean_i -log p(x_i; T)[y_i]    fitted on VALIDATION logits
    ECE      = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|   equal-width bins of the confidence
               max_c p_c, bin b = (b/B, (b+1)/B] (the first bin also holds 0)

The NLL is convex in 1/T (a log-sum-exp of a linear function minus a linear term), so a
golden-section search over log(1/T) finds the global minimum; it runs in float64 NumPy, needs no
optimiser state and gives the same T on every machine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _as_logits(logits: Any) -> np.ndarray:
    array = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"logits must be (flows, classes >= 2), got shape {array.shape}")
    return array.astype(np.float64)


def _as_targets(labels: Any, n: int, classes: int) -> np.ndarray:
    array = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    if array.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match the logits, got shape {array.shape}")
    if n and (array.min() < 0 or array.max() >= classes):
        raise ValueError(f"labels must be in 0..{classes - 1}, got {array.min()}..{array.max()}")
    return array


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) row by row, float64."""
    z = _as_logits(logits) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    z = _as_logits(logits) / temperature
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(z / T)."""
    z = _as_logits(logits)
    y = _as_targets(labels, z.shape[0], z.shape[1])
    if z.shape[0] == 0:
        return 0.0
    return float(-log_softmax(z, temperature)[np.arange(z.shape[0]), y].mean())


def fit_temperature(
    logits: Any,
    labels: Any,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-6,
) -> float:
    """The temperature T in `bounds` that minimises the NLL of (logits, labels).

    Fit on validation flows, apply to test flows. Returns 1.0 when there is nothing to fit.
    """
    z = _as_logits(logits)
    y = _as_targets(labels, z.shape[0], z.shape[1])
    if z.shape[0] == 0:
        return 1.0
    low, high = math.log(1.0 / bounds[1]), math.log(1.0 / bounds[0])  # over u = log(1/T)

    def loss(u: float) -> float:
        return nll(z, y, temperature=math.exp(-u))

    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = loss(d)
    return float(math.exp(-(a + b) / 2.0))


def reliability(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (None when empty)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (flows, classes), got shape {p.shape}")
    y = _as_targets(labels, p.shape[0], p.shape[1])
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds (edges[b], edges[b+1]]; confidence 0 goes to the first bin
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    filled = counts > 0
    return {
        "edges": edges.tolist(),
        "count": counts.tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, counts, strict=True)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, counts, strict=True)],
        "ece": float(np.abs(correct_sum[filled] - conf_sum[filled]).sum() / max(1, p.shape[0])),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE with `n_bins` equal-width confidence bins (module docstring)."""
    return reliability(probs, labels, n_bins)["ece"]


def calibration_report(
    valid_logits: Any,
    valid_labels: Any,
    test_logits: Any,
    test_labels: Any,
    n_bins: int = 15,
) -> dict[str, Any]:
    """T fitted on validation; NLL, ECE and reliability bins on test before and after it."""
    temperature = fit_temperature(valid_logits, valid_labels)
    before = reliability(softmax(test_logits), test_labels, n_bins)
    after = reliability(softmax(test_logits, temperature), test_labels, n_bins)
    return {
        "temperature": temperature,
        "n_bins": n_bins,
        "nll_before": nll(test_logits, test_labels),
        "nll_after": nll(test_logits, test_labels, temperature),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "reliability_before": before,
        "reliability_after": after,
    }
