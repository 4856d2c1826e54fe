"""Fine-tuning losses: the label-distribution-aware (LDA) loss and plain cross-entropy (SPEC §5).

LDA = class-balanced weights + LDAM margins:

    w_y     = (1 - beta) / (1 - beta^n_y)           normalised so that sum_y w_y = C
    Delta_j = C' / n_j^(1/4)                         C' chosen so that max_j Delta_j = max_margin
    z'      = s * (z - Delta_y * onehot(y))          margin on the true class only, then scale s
    l_i     = -(1 - eps) log softmax(z'_i)[y_i] - eps / C * sum_c log softmax(z'_i)[c]
    L       = sum_i w_{y_i} l_i / sum_i w_{y_i}      (weighted mean, PyTorch's convention)

with C classes, n_y the training flows of class y and eps the label smoothing. With deferred
re-weighting the weights are all 1 before `reweight_from_epoch` and w_y from then on; the
margins apply at every epoch. Labels of -1 (unlabelled flows) are left out of the mean.

LDAM was designed for a cosine head (logits in [-1, 1]); on a plain linear head s x margin is
15 nats of loss at the start and large gradients. Cross-entropy on a cosine head needs the
scale as well (cosines alone give near-uniform probabilities): `logit_scale()` says which s
multiplies the model's outputs, in the loss and at inference.

The public NetMamba+ code builds this loss and then trains with plain cross-entropy; here the
loss that is configured is the loss that is applied, and `describe()` records its weights and
margins with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netmamba.config import Config, ConfigError

IGNORE_LABEL = -1  # unlabelled flows in a batch


@dataclass
class LossConfig(Config):
    """Which fine-tuning loss and its settings; the defaults are SPEC §5's."""

    kind: str = "lda"  # "lda" (class-balanced weights + LDAM margins) or "ce" (cross-entropy)
    label_smoothing: float = 0.1  # eps
    beta: float = 0.999  # class-balanced weights: w_y = (1 - beta) / (1 - beta^n_y)
    max_margin: float = 0.5  # LDAM: the largest margin Delta_j
    scale: float = 30.0  # s: LDA logits (after the margin), and any cosine head's, times s
    margins: bool = True  # LDA only: apply the LDAM margins
    reweight: bool = True  # LDA only: apply the class-balanced weights
    reweight_from_epoch: int = 0  # deferred re-weighting: weights are 1 before this epoch

    def __post_init__(self) -> None:
        if self.kind not in ("lda", "ce"):
            raise ConfigError(f"LossConfig.kind must be 'lda' or 'ce', got {self.kind!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("LossConfig.label_smoothing must be in [0, 1)")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError("LossConfig.beta must be in [0, 1)")
        if self.max_margin < 0.0:
            raise ConfigError("LossConfig.max_margin must be >= 0")
        if self.scale <= 0.0:
            raise ConfigError("LossConfig.scale must be positive")
        if self.reweight_from_epoch < 0:
            raise ConfigError("LossConfig.reweight_from_epoch must be >= 0")


def _counts_array(class_counts: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    counts = np.asarray(
        class_counts.cpu().numpy() if isinstance(class_counts, torch.Tensor) else class_counts,
        dtype=np.float64,
    )
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("class_counts must be a non-empty 1-D sequence (flows per class)")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    if not np.any(counts > 0):
        raise ValueError("class_counts are all zero: the training split has no labelled flow")
    return counts


def class_balanced_weights(
    class_counts: Sequence[int] | np.ndarray | torch.Tensor, beta: float = 0.999
) -> torch.Tensor:
    """w_y = (1 - beta) / (1 - beta^n_y), normalised to sum to the number of classes.

    A class with no training flow gets weight 0 (no target of that class ever reaches the loss);
    the others share the sum C. beta = 0 gives equal weights.
    """
    counts = _counts_array(class_counts)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    weights *= counts.size / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def ldam_margins(
    class_counts: Sequence[int] | np.ndarray | torch.Tensor, max_margin: float = 0.5
) -> torch.Tensor:
    """Delta_j proportional to n_j^(-1/4), scaled so the largest (rarest class) is `max_margin`.

    A class with no training flow gets margin 0 (its margin would only ever apply to its own
    targets, and there are none).
    """
    counts = _counts_array(class_counts)
    present = counts > 0
    margins = np.zeros_like(counts)
    margins[present] = 1.0 / np.power(counts[present], 0.25)
    margins *= max_margin / margins.max()
    return torch.tensor(margins, dtype=torch.float32)


def _smoothed_nll(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Per-sample -(1-eps) log p_y - eps/C sum_c log p_c; logits (B, C), labels (B,) valid."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)  # (B,)
    if label_smoothing == 0.0:
        return nll
    uniform = -log_probs.mean(dim=-1)  # (B,)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be (batch,) = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} classes but the loss was built for {num_classes}"
        )
    valid = labels[labels != IGNORE_LABEL]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[1]):
        raise ValueError(
            f"labels must be in 0..{logits.shape[1] - 1} (or -1 for unlabelled), "
            f"got {int(valid.min())}..{int(valid.max())}"
        )


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of s x logits with label smoothing; labels of -1 are left out of the mean.
    s = 1 for a linear head, LossConfig.scale for a cosine head."""

    def __init__(self, label_smoothing: float = 0.1, scale: float = 1.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.scale = float(scale)

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes with the epoch (same interface as LDALoss)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, labels, None)
        keep = labels != IGNORE_LABEL  # (B,)
        if not bool(keep.any()):
            return logits.sum() * 0.0  # keeps the graph so backward() still works
        scaled = self.scale * logits[keep].float()
        return _smoothed_nll(scaled, labels[keep], self.label_smoothing).mean()

    def describe(self) -> dict[str, Any]:
        return {"kind": "ce", "label_smoothing": self.label_smoothing, "scale": self.scale}


class LDALoss(nn.Module):
    """Label-distribution-aware loss: LDAM margins + class-balanced weights (module docstring)."""

    def __init__(
        self, class_counts: Sequence[int] | np.ndarray | torch.Tensor, config: LossConfig
    ) -> None:
        super().__init__()
        self.config = config
        counts = _counts_array(class_counts)
        self.num_classes = int(counts.size)
        self.class_counts = [int(c) for c in counts]
        margins = ldam_margins(counts, config.max_margin)
        if not config.margins:
            margins = torch.zeros_like(margins)
        self.register_buffer("margins", margins)  # (C,)
        self.register_buffer("weights", class_balanced_weights(counts, config.beta))  # (C,)
        self.epoch = 0

    @property
    def weights_active(self) -> bool:
        """Whether the class-balanced weights apply at the current epoch."""
        return self.config.reweight and self.epoch >= self.config.reweight_from_epoch

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current (0-based) epoch: deferred re-weighting switches on here."""
        self.epoch = int(epoch)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, labels, self.num_classes)
        keep = labels != IGNORE_LABEL  # (B,)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        logits, labels = logits[keep].float(), labels[keep]  # (B', C), (B',)
        margin = self.margins[labels]  # (B',)
        shifted = logits.scatter_add(1, labels[:, None], -margin[:, None])  # z - Delta_y e_y
        per_sample = _smoothed_nll(self.config.scale * shifted, labels, self.config.label_smoothing)
        if not self.weights_active:
            return per_sample.mean()
        w = self.weights[labels]  # (B',)
        return (w * per_sample).sum() / w.sum()

    def describe(self) -> dict[str, Any]:
        """What the loss applies, for the run's record."""
        return {
            "kind": "lda",
            "config": self.config.to_dict(),
            "class_counts": self.class_counts,
            "margins": [round(float(m), 6) for m in self.margins],
            "weights": [round(float(w), 6) for w in self.weights],
            "weights_active": self.weights_active,
            "epoch": self.epoch,
        }


def logit_scale(config: LossConfig, head: str = "linear") -> float:
    """s, what the model's outputs are multiplied by in the loss and at inference: the LDA
    loss's scale, or a cosine head's under any loss; 1 for cross-entropy on a linear head."""
    return config.scale if (config.kind == "lda" or head == "cosine") else 1.0


def build_loss(
    config: LossConfig,
    class_counts: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    head: str = "linear",
) -> CrossEntropyLoss | LDALoss:
    """The loss a configuration names for a model's head ("linear" or "cosine"); LDA needs the
    training flows per class."""
    if config.kind == "ce":
        return CrossEntropyLoss(config.label_smoothing, logit_scale(config, head))
    if class_counts is None:
        raise ValueError("the LDA loss needs class_counts (training flows per class)")
    return LDALoss(class_counts, config)
