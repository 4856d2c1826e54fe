"""One encoder skeleton for both backbones (only the block differs).

tokens  = [sizes..., size CLS, IATs..., IAT CLS, byte strides..., byte CLS]   (paper layout)
token   = content + modality indicator + learnable positional embedding
content = sinusoidal value embedding (sizes; IATs times `iat_scale`) | linear map of L_s bytes
          (strides) | CLS
encoder = blocks (Mamba or attention) -> final norm; each class token sits at the END of its
          segment, because the Mamba scan is causal: the last token has seen everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netmamba.models import inputs
from netmamba.models.attention import AttentionBlock
from netmamba.models.config import ModelConfig
from netmamba.models.layers import (
    RMSNorm,
    drop_path_rates,
    init_linear,
    init_mamba_mixer,
    sinusoidal_embedding,
)
from netmamba.models.mamba import MambaBlock


def make_blocks(
    config: ModelConfig, width: int, depth: int, dt_rank: int | None = None
) -> nn.ModuleList:
    """`depth` blocks of the configured backbone, `width` wide, drop path rising to the maximum
    (Mamba: delta rank `dt_rank`, default ceil(width / 16))."""
    blocks = []
    for rate in drop_path_rates(config.drop_path, depth):
        if config.backbone == "mamba":
            blocks.append(
                MambaBlock(
                    width,
                    d_state=config.d_state,
                    expand=config.expand,
                    d_conv=config.d_conv,
                    dt_rank=dt_rank,
                    drop_path=rate,
                    norm_eps=config.norm_eps,
                )
            )
        else:
            blocks.append(
                AttentionBlock(
                    width,
                    n_heads=config.n_heads,
                    ffn_mult=config.ffn_mult,
                    dropout=config.dropout,
                    drop_path=rate,
                    norm_eps=config.norm_eps,
                )
            )
    return nn.ModuleList(blocks)


def init_blocks(config: ModelConfig, blocks: nn.ModuleList) -> None:
    """Linear layers of `blocks` after `init_linear`: kept (init "paper"), or Mamba's own
    initialisation of the mixers (init "mamba", see `layers.init_mamba_mixer`)."""
    if config.init == "mamba" and config.backbone == "mamba":
        for block in blocks:
            init_mamba_mixer(block.mixer, len(blocks))


def make_norm(config: ModelConfig, width: int) -> nn.Module:
    """The final norm: RMSNorm for Mamba, LayerNorm (eps 1e-6) for the transformer."""
    if config.backbone == "mamba":
        return RMSNorm(width, eps=config.norm_eps)
    return nn.LayerNorm(width, eps=1e-6)


@dataclass
class Segment:
    """Tokens of one modality before its class token."""

    name: str
    tokens: torch.Tensor  # (B, n, D), positional embedding and indicator included
    valid: torch.Tensor  # (B, n) bool


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, D) after the final norm
    valid: torch.Tensor  # (B, T) bool
    cls: dict[str, torch.Tensor]  # modality -> (B, D) class-token output
    starts: dict[str, int]  # modality -> index of its first token in `hidden`


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        self.lengths = config.segment_lengths()  # modality -> tokens before its CLS
        self.offsets = {}  # modality -> first position in the full layout
        position = 0
        for name, n in self.lengths.items():
            self.offsets[name] = position
            position += n + 1
        if "bytes" in self.lengths:
            self.byte_embed = nn.Linear(config.token_bytes, D)  # = Conv1d(1, D, L_s, stride L_s)
        self.cls_tokens = nn.ParameterDict({m: nn.Parameter(torch.zeros(D)) for m in self.lengths})
        self.indicators = nn.ParameterDict({m: nn.Parameter(torch.zeros(D)) for m in self.lengths})
        self.pos_embed = nn.Parameter(torch.zeros(config.n_tokens, D))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = make_blocks(config, D, config.depth, config.dt_rank or None)
        self.norm = make_norm(config, D)
        self._init_weights()

    def _init_weights(self) -> None:
        init_linear(self)
        init_blocks(self.config, self.blocks)
        for p in (self.pos_embed, *self.cls_tokens.values(), *self.indicators.values()):
            nn.init.trunc_normal_(p, std=0.02)
        if hasattr(self, "byte_embed"):  # LeCun normal, as the authors' stride convolution
            nn.init.trunc_normal_(self.byte_embed.weight, std=self.config.token_bytes**-0.5)
            nn.init.zeros_(self.byte_embed.bias)

    # ---- embedding -----------------------------------------------------------------------

    def content(
        self, batch: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality: (content (B, n, D) without position or indicator, valid (B, n))."""
        config, D = self.config, self.config.d_model
        out = {}
        for name in self.lengths:
            if name == "bytes":
                values = inputs.byte_token_values(config, batch)  # (B, n, L_s)
                out[name] = (self.byte_embed(values), inputs.byte_token_valid(config, batch))
            else:
                values = (
                    inputs.size_values(config, batch)
                    if name == "sizes"
                    else config.iat_scale * inputs.iat_values(batch)
                )  # (B, M_seq)
                out[name] = (sinusoidal_embedding(values, D), batch["seq_mask"])
        return out

    def place(
        self, name: str, content: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """content (B, n, D) + indicator + positional embedding of segment positions
        `positions` ((B, n) indices within the segment; default 0..n-1)."""
        start = self.offsets[name]
        if positions is None:
            pos = self.pos_embed[start : start + content.shape[1]]  # (n, D)
        else:
            pos = self.pos_embed[start + positions]  # (B, n, D)
        return content + self.indicators[name] + pos

    def segments(self, batch: dict[str, torch.Tensor]) -> list[Segment]:
        return [
            Segment(name, self.place(name, content), valid)
            for name, (content, valid) in self.content(batch).items()
        ]

    def cls_token(self, name: str) -> torch.Tensor:
        """(D,) class token of a modality with its indicator and position (end of segment)."""
        position = self.offsets[name] + self.lengths[name]
        return self.cls_tokens[name] + self.indicators[name] + self.pos_embed[position]

    # ---- encoding ------------------------------------------------------------------------

    def encode(self, segments: list[Segment]) -> EncoderOutput:
        """Concatenate the segments (each followed by its class token), run the blocks."""
        parts, valid_parts, cls_index, starts = [], [], {}, {}
        position = 0
        for seg in segments:
            batch, n, D = seg.tokens.shape
            cls = self.cls_token(seg.name).expand(batch, 1, D)
            parts += [seg.tokens, cls]
            valid_parts += [seg.valid, seg.valid.new_ones(batch, 1)]
            starts[seg.name] = position
            cls_index[seg.name] = position + n
            position += n + 1
        x = self.drop(torch.cat(parts, dim=1)).float()  # (B, T, D)
        valid = torch.cat(valid_parts, dim=1)  # (B, T)
        mask = valid if self.config.mask_padding else None
        for block in self.blocks:
            x = block(x, mask)  # (B, T, D)
        hidden = self.norm(x)  # (B, T, D)
        cls = {name: hidden[:, index] for name, index in cls_index.items()}  # (B, D) each
        return EncoderOutput(hidden, valid, cls, starts)

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        """batch: tensors on the model's device (see `inputs.batch_to_tensors`)."""
        return self.encode(self.segments(batch))
