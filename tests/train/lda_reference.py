"""The LDA loss of SPEC section 5 written out with math only (no torch): the reference the
loss tests and the fine-tuning tests compare against."""

from __future__ import annotations

import math


def hand_lda_loss(logits, labels, counts, eps, s=30.0, beta=0.999, weighted=True):
    """The SPEC §5 formula written out with math only (no torch)."""
    c = len(counts)
    raw_margin = [n**-0.25 for n in counts]
    margin = [0.5 * m / max(raw_margin) for m in raw_margin]
    raw_w = [(1 - beta) / (1 - beta**n) for n in counts]
    w = [x * c / sum(raw_w) for x in raw_w]
    num = den = 0.0
    for z, y in zip(logits, labels, strict=True):
        shifted = [s * (zj - (margin[y] if j == y else 0.0)) for j, zj in enumerate(z)]
        top = max(shifted)
        log_norm = top + math.log(sum(math.exp(v - top) for v in shifted))
        log_p = [v - log_norm for v in shifted]
        loss = -(1 - eps) * log_p[y] - eps / c * sum(log_p)
        weight = w[y] if weighted else 1.0
        num += weight * loss
        den += weight
    return num / den
