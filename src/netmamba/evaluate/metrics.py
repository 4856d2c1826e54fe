"""Classification metrics from a confusion matrix (SPEC §6).

    cm[i, j]      flows of true class i predicted as class j (all C classes, rows = truth)
    precision_j = cm[j, j] / sum_i cm[i, j]      0 when class j is never predicted
    recall_j    = cm[j, j] / sum_j' cm[j, j']    0 when class j has no test flow
    f1_j        = 2 p r / (p + r)                0 when p + r = 0
    weighted    = mean over classes weighted by support (the paper's numbers)
    macro       = plain mean over the classes that occur in the truth or the predictions

Macro averages skip classes that neither occur in the test split nor are predicted (so a class
absent from a small test split does not count as a zero); this is scikit-learn's convention
with `zero_division=0`, which the tests check against. Labels of -1 (unlabelled) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SUMMARY_KEYS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
)


def _as_labels(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got {array.dtype}")
    return array.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """cm (C, C) int64, rows = true class, columns = predicted class."""
    true, pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} flows but y_pred has {pred.size}")
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} must be in 0..{num_classes - 1}, got {arr.min()}..{arr.max()}"
            )
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Summary metrics and per-class precision / recall / F1 / support from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # (C,) true flows per class
    predicted = cm.sum(axis=0)  # (C,) predicted flows per class
    precision = _divide(tp, predicted.astype(np.float64))
    recall = _divide(tp, support.astype(np.float64))
    f1 = _divide(2 * precision * recall, precision + recall)
    total = int(support.sum())
    seen = (support > 0) | (predicted > 0)  # classes that count in the macro mean
    weights = support / total if total else np.zeros_like(tp)

    def macro(values: np.ndarray) -> float:
        return float(values[seen].mean()) if seen.any() else 0.0

    return {
        "n": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Accuracy, macro and weighted P/R/F1, a per-class report and the confusion matrix.

    Returns a JSON-ready dict: the SUMMARY_KEYS as floats, `n` (flows scored), `n_unlabelled`
    (labels of -1 left out), `classes` (names), `per_class` (a list of dicts with name,
    precision, recall, f1, support) and `confusion_matrix` (C lists of C ints, rows = truth).
    """
    true, pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} flows but y_pred has {pred.size}")
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"{len(class_names)} class names but num_classes={num_classes}")
        num_classes = len(class_names)
    if num_classes is None:
        num_classes = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    labelled = true != -1
    cm = confusion_matrix(true[labelled], pred[labelled], num_classes)
    m = metrics_from_confusion(cm)
    per_class = [
        {
            "name": names[j],
            "precision": float(m["precision"][j]),
            "recall": float(m["recall"][j]),
            "f1": float(m["f1"][j]),
            "support": int(m["support"][j]),
        }
        for j in range(num_classes)
    ]
    out: dict[str, Any] = {key: m[key] for key in SUMMARY_KEYS}
    out.update(
        n=m["n"],
        n_unlabelled=int((~labelled).sum()),
        classes=names,
        per_class=per_class,
        confusion_matrix=cm.tolist(),
    )
    return out


def metrics_from_logits(
    logits: Any, labels: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """`classification_metrics` of argmax predictions; logits (n, C) array or tensor."""
    scores = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits)
    if scores.ndim != 2:
        raise ValueError(f"logits must be (flows, classes), got shape {scores.shape}")
    return classification_metrics(
        labels, scores.argmax(axis=1), class_names, num_classes=scores.shape[1]
    )


def format_metrics_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per summary metric, one column per result (model, baseline)."""
    names = list(results)
    width = max(len(k) for k in SUMMARY_KEYS)
    lines = ["metric".ljust(width) + "".join(f"  {n:>12}" for n in names)]
    for key in SUMMARY_KEYS:
        cells = "".join(f"  {results[n].get(key, float('nan')):>12.4f}" for n in names)
        lines.append(key.ljust(width) + cells)
    return "\n".join(lines)
