"""Training: the fine-tuning losses, the optimiser with layer-wise lr decay and its schedule.

The training loop (resume, DDP) and the pretrain / finetune entry points build on these.
"""

from netmamba.train.loss import (
    CrossEntropyLoss,
    LDALoss,
    LossConfig,
    build_loss,
    class_balanced_weights,
    ldam_margins,
)
from netmamba.train.optim import (
    OptimConfig,
    WarmupCosineSchedule,
    build_optimizer,
    build_schedule,
    effective_lr,
    param_groups,
    warmup_cosine_lr,
)

__all__ = [
    "CrossEntropyLoss",
    "LDALoss",
    "LossConfig",
    "OptimConfig",
    "WarmupCosineSchedule",
    "build_loss",
    "build_optimizer",
    "build_schedule",
    "class_balanced_weights",
    "effective_lr",
    "ldam_margins",
    "param_groups",
    "warmup_cosine_lr",
]
