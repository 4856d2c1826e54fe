"""Evaluation: metrics, calibration, unknown-class detection, the classical baseline,
throughput and the HTML report (SPEC §6).

Each module works on plain NumPy arrays (logits, labels, the sample arrays), so the evaluate
verb, the training loop and the tests share them. scikit-learn is imported only when the
baseline is fitted, torch only when throughput is measured.
"""

from netmamba.evaluate.baseline import (
    BaselineConfig,
    ClassicalBaseline,
    baseline_features,
    run_baseline,
)
from netmamba.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
)
from netmamba.evaluate.metrics import (
    SUMMARY_KEYS,
    classification_metrics,
    confusion_matrix,
    format_metrics_table,
    metrics_from_logits,
)
from netmamba.evaluate.ood import (
    SCORE_KINDS,
    UnknownDetector,
    auroc,
    fit_threshold,
    fpr_at_tpr,
    unknown_class_report,
    unknown_scores,
)
from netmamba.evaluate.report import (
    data_summary,
    read_metrics_json,
    render_report,
    write_metrics_json,
    write_report,
)
from netmamba.evaluate.throughput import count_parameters, measure_throughput

__all__ = [
    "SCORE_KINDS",
    "SUMMARY_KEYS",
    "BaselineConfig",
    "ClassicalBaseline",
    "UnknownDetector",
    "auroc",
    "baseline_features",
    "calibration_report",
    "classification_metrics",
    "confusion_matrix",
    "count_parameters",
    "data_summary",
    "expected_calibration_error",
    "fit_temperature",
    "fit_threshold",
    "format_metrics_table",
    "fpr_at_tpr",
    "measure_throughput",
    "metrics_from_logits",
    "read_metrics_json",
    "reliability",
    "render_report",
    "run_baseline",
    "softmax",
    "unknown_class_report",
    "unknown_scores",
    "write_metrics_json",
    "write_report",
]
