"""Training: the fine-tuning losses, the optimiser with layer-wise lr decay and its schedule,
the step-based loop (resume, DDP) and the pretrain / finetune entry points.

    pretrain(["data/corpus"], "runs/pre", PretrainConfig(preset="fast"))
    finetune("data/iot", "runs/iot", FinetuneConfig(preset="fast"), init="runs/pre")
"""

from netmamba.train.finetune import FinetuneConfig, FinetuneResult, finetune
from netmamba.train.loop import TrainConfig
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
from netmamba.train.pretrain import PretrainConfig, PretrainResult, pretrain
from netmamba.train.rundir import TrainError

__all__ = [
    "CrossEntropyLoss",
    "FinetuneConfig",
    "FinetuneResult",
    "LDALoss",
    "LossConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainResult",
    "TrainConfig",
    "TrainError",
    "WarmupCosineSchedule",
    "build_loss",
    "build_optimizer",
    "build_schedule",
    "class_balanced_weights",
    "effective_lr",
    "finetune",
    "ldam_margins",
    "param_groups",
    "pretrain",
    "warmup_cosine_lr",
]
