"""The classifier: encoder -> fusion of the class tokens -> linear or cosine head.

fusion "sum":    f = CLS_sizes + CLS_iats + CLS_bytes                            (paper default)
fusion "concat": f = MLP([CLS_sizes, CLS_iats, CLS_bytes]): 3D -> 2D -> D, SELU, dropout
head "linear":   logits = W_head f  (no bias by default: the paper's 1,868,544 + 256 x classes)
head "cosine":   logits_c = <f / |f|, w_c / |w_c|> in [-1, 1], the same parameters; the loss
                 (and the checkpoint's logit scale) multiplies them by s. This is the head LDAM
                 was designed for: its margins (0.5) and scale (30) are in cosine units.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netmamba.models import inputs
from netmamba.models.config import ModelConfig
from netmamba.models.encoder import Encoder
from netmamba.models.layers import init_linear


class Classifier(nn.Module):
    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least one class (got {num_classes})")
        self.config = config
        self.num_classes = num_classes
        self.encoder = Encoder(config)
        D, k = config.d_model, len(config.modalities)
        self.fuse: nn.Module | None = None
        if config.fusion == "concat" and k > 1:
            self.fuse = nn.Sequential(
                nn.Linear(k * D, 2 * D),
                nn.SELU(),
                nn.Dropout(config.dropout),
                nn.Linear(2 * D, D),
                nn.SELU(),
                nn.Dropout(config.dropout),
            )
            init_linear(self.fuse)
        self.head = nn.Linear(D, num_classes, bias=config.head_bias)
        if config.head == "cosine":  # rows of norm ~1: only their direction counts
            nn.init.trunc_normal_(self.head.weight, std=D**-0.5)
        else:  # as MAE fine-tuning: start near uniform
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    def prepare(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch as checked tensors on the model's device."""
        tensors = inputs.batch_to_tensors(batch, self.device)
        inputs.check_batch(self.config, tensors)
        return tensors

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, D): the fused class-token features, before the head."""
        cls = self.encoder(self.prepare(batch)).cls  # modality -> (B, D)
        if self.fuse is not None:
            return self.fuse(torch.cat([cls[m] for m in self.config.modalities], dim=-1))
        return torch.stack(list(cls.values())).sum(0)  # (B, D)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, classes) logits (cosines in [-1, 1] for the cosine head)."""
        return self.logits(self.features(batch))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head: (B, D) fused features -> (B, classes)."""
        if self.config.head == "cosine":
            w = F.normalize(self.head.weight, dim=-1)  # (classes, D)
            return F.linear(F.normalize(features, dim=-1), w)  # (B, classes)
        return self.head(features)

    # ---- for the optimiser -----------------------------------------------------------------

    def layer_id(self, param_name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, the final
        norm, fusion and head depth + 1."""
        depth = self.config.depth
        if param_name.startswith("encoder.blocks."):
            return int(param_name.split(".")[2]) + 1
        if param_name.startswith(
            ("encoder.byte_embed", "encoder.pos_embed", "encoder.cls_tokens", "encoder.indicators")
        ):
            return 0
        return depth + 1

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: positions, class tokens, indicators, Mamba's A_log
        and D, norms and biases."""
        return no_weight_decay(self)


def no_weight_decay(model: nn.Module) -> set[str]:
    names = set()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if (
            p.ndim <= 1
            or leaf in ("A_log", "D", "pos_embed", "mask_token")
            or ".cls_tokens." in name
            or ".indicators." in name
            or ".norm" in name
        ):
            names.add(name)
    return names


def build_classifier(config: ModelConfig, num_classes: int) -> Classifier:
    """A NetMamba+ (or NetTrans, per `config.backbone`) classifier for `num_classes` classes."""
    return Classifier(config, num_classes)
