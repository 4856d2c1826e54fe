"""NetMamba+ and NetTrans models (SPEC sections 3 and 4).

model       = Encoder (one skeleton, Mamba or attention blocks) + fusion + head (Classifier), or
              + byte decoder and size / IAT heads (Pretrainer)
Mamba block = RMSNorm -> mixer (in_proj -> causal conv -> selective scan -> gate) -> residual
scan        = native C kernel on CPU, mamba_ssm on GPU, PyTorch otherwise (models/scan.py)

    config = ModelConfig.preset("paper")            # or "fast", backbone="transformer", ...
    model = build_classifier(config, num_classes)   # model(batch) -> logits
    pretrainer = build_pretrainer(config)           # pretrainer(batch)["loss"]
"""

from netmamba.models.classifier import Classifier, build_classifier
from netmamba.models.config import PRESETS, VARIANTS, GeometryError, ModelConfig
from netmamba.models.encoder import Encoder, EncoderOutput
from netmamba.models.inputs import batch_to_tensors, random_batch
from netmamba.models.pretrain import Pretrainer, build_pretrainer
from netmamba.models.scan import selective_scan, selective_scan_reference

__all__ = [
    "PRESETS",
    "VARIANTS",
    "Classifier",
    "Encoder",
    "EncoderOutput",
    "GeometryError",
    "ModelConfig",
    "Pretrainer",
    "batch_to_tensors",
    "build_classifier",
    "build_pretrainer",
    "random_batch",
    "selective_scan",
    "selective_scan_reference",
]
