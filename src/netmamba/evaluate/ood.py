"""Unknown-class detection: scores, AUROC, FPR at 95% TPR, and the threshold the classifier uses.

Every score is oriented so that HIGHER means MORE LIKELY UNKNOWN (p = softmax(z / T)):

    entropy      -sum_c p_c log p_c                  (SPEC §6's detector)
    max_softmax  1 - max_c p_c                       (Hendrycks & Gimpel's baseline)
    energy       -T log sum_c exp(z_c / T)           (Liu et al.'s energy score)

A flow is ACCEPTED as a known class when its score <= threshold and FLAGGED unknown otherwise.
For the ROC, known flows are the POSITIVES (a detector's job is to accept them):

    TPR(t) = share of known flows with score <= t    (known flows accepted)
    FPR(t) = share of unknown flows with score <= t  (unknown flows wrongly accepted)
    FPR at 95% TPR = FPR(t95), t95 the smallest t with TPR(t) >= 0.95
    AUROC = P(score of an unknown flow > score of a known flow), ties counted half

The operating threshold is chosen on VALIDATION flows (all of known classes): the smallest score
that accepts `accept_rate` (95%) of them. `UnknownDetector` holds the score kind, the
temperature and that threshold; it is stored with the checkpoint and used by the classify verb
and the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from netmamba.config import Config, ConfigError
from netmamba.evaluate.calibration import log_softmax

SCORE_KINDS = ("entropy", "max_softmax", "energy")


def unknown_scores(logits: Any, kind: str = "entropy", temperature: float = 1.0) -> np.ndarray:
    """Per-flow unknown score (higher = more likely unknown) of logits (n, C)."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = log_softmax(logits, temperature)  # (n, C), float64
    if kind == "entropy":
        return -(np.exp(log_p) * log_p).sum(axis=1)
    if kind == "max_softmax":
        return 1.0 - np.exp(log_p.max(axis=1))
    z = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits, np.float64)
    z = z / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _scores(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array of scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinite scores")
    return array


def auroc(known: Any, unknown: Any) -> float:
    """P(unknown score > known score) + P(equal) / 2 (Mann-Whitney U over average ranks)."""
    k, u = _scores(known, "known scores"), _scores(unknown, "unknown scores")
    both = np.concatenate([k, u])
    order = np.argsort(both, kind="mergesort")
    sorted_scores = both[order]
    # average rank (1-based) of each group of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], both.size]
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty_like(both)
    ranks[order] = np.repeat(group_rank, ends - starts)
    rank_sum_unknown = ranks[k.size :].sum()
    u_stat = rank_sum_unknown - u.size * (u.size + 1) / 2.0
    return float(u_stat / (k.size * u.size))


def fit_threshold(known_scores: Any, accept_rate: float = 0.95) -> float:
    """The smallest score t that accepts (score <= t) at least `accept_rate` of `known_scores`."""
    if not 0.0 < accept_rate <= 1.0:
        raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate}")
    k = np.sort(_scores(known_scores, "known scores"))
    return float(k[max(0, math.ceil(accept_rate * k.size - 1e-9) - 1)])


def fpr_at_tpr(known: Any, unknown: Any, tpr: float = 0.95) -> float:
    """Share of unknown flows accepted at the threshold that first accepts `tpr` of known flows."""
    threshold = fit_threshold(known, tpr)
    return float((_scores(unknown, "unknown scores") <= threshold).mean())


def roc_curve(known: Any, unknown: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for every distinct score as a threshold, ascending, from (0, 0)."""
    k, u = _scores(known, "known scores"), _scores(unknown, "unknown scores")
    thresholds = np.unique(np.concatenate([k, u]))
    tpr = np.searchsorted(np.sort(k), thresholds, side="right") / k.size
    fpr = np.searchsorted(np.sort(u), thresholds, side="right") / u.size
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[-np.inf, thresholds]


@dataclass
class UnknownDetector(Config):
    """Flags a flow as unknown when its score exceeds the threshold fitted on validation data."""

    score: str = "entropy"  # one of SCORE_KINDS
    temperature: float = 1.0  # T of the calibrated softmax
    threshold: float | None = None  # None: never flag (no threshold was fitted)
    accept_rate: float = 0.95  # share of known validation flows the threshold accepts

    def __post_init__(self) -> None:
        if self.score not in SCORE_KINDS:
            raise ConfigError(
                f"UnknownDetector.score must be one of {', '.join(SCORE_KINDS)}, got {self.score!r}"
            )
        if self.temperature <= 0:
            raise ConfigError("UnknownDetector.temperature must be positive")

    @classmethod
    def fit(
        cls,
        valid_logits: Any,
        score: str = "entropy",
        temperature: float = 1.0,
        accept_rate: float = 0.95,
    ) -> UnknownDetector:
        """Threshold accepting `accept_rate` of the (known-class) validation flows."""
        scores = unknown_scores(valid_logits, score, temperature)
        return cls(score, temperature, fit_threshold(scores, accept_rate), accept_rate)

    def scores(self, logits: Any) -> np.ndarray:
        return unknown_scores(logits, self.score, self.temperature)

    def is_unknown(self, logits: Any) -> np.ndarray:
        """Boolean (n,): True where the flow is flagged as of a class not seen in training."""
        scores = self.scores(logits)
        if self.threshold is None:
            return np.zeros(scores.shape, dtype=bool)
        return scores > self.threshold


def _histogram(known: np.ndarray, unknown: np.ndarray, bins: int) -> dict[str, Any]:
    low = float(min(known.min(), unknown.min()))
    high = float(max(known.max(), unknown.max()))
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    return {
        "edges": edges.tolist(),
        "known": np.histogram(known, edges)[0].tolist(),
        "unknown": np.histogram(unknown, edges)[0].tolist(),
    }


def unknown_class_report(
    valid_logits: Any,
    test_logits: Any,
    unknown_logits: Any,
    temperature: float = 1.0,
    accept_rate: float = 0.95,
    bins: int = 30,
) -> dict[str, Any]:
    """For each score kind: AUROC and FPR at 95% TPR (test known vs unknown flows), the
    validation threshold and what it does on test (known accepted, unknown flagged), and
    histograms of both score distributions for the report."""
    report: dict[str, Any] = {
        "temperature": temperature,
        "accept_rate": accept_rate,
        "n_known": int(np.asarray(test_logits).shape[0]),
        "n_unknown": int(np.asarray(unknown_logits).shape[0]),
        "scores": {},
    }
    for kind in SCORE_KINDS:
        detector = UnknownDetector.fit(valid_logits, kind, temperature, accept_rate)
        known = detector.scores(test_logits)
        unknown = detector.scores(unknown_logits)
        report["scores"][kind] = {
            "auroc": auroc(known, unknown),
            "fpr_at_95_tpr": fpr_at_tpr(known, unknown, 0.95),
            "threshold": detector.threshold,
            "known_accepted": float((known <= detector.threshold).mean()),
            "unknown_flagged": float((unknown > detector.threshold).mean()),
            "histogram": _histogram(known, unknown, bins),
        }
    return report
