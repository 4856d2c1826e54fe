"""Evaluation: metrics, calibration, unknown-class detection, the classical baseline,
throughput and the HTML report (SPEC §6).

Each module works on plain NumPy arrays (logits, labels, the sample arrays), so the evaluate
verb, the training loop and the tests share them.
"""
