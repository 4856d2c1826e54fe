"""The pre-training model (SPEC section 4): masked reconstruction of all three modalities.

bytes: keep a random 10% of each flow's real strides (in order); the encoder sees only those,
       plus the other modalities and the class tokens. A light decoder (linear D -> D_dec, mask
       tokens at the hidden strides, its own positional embedding, blocks of width D_dec, linear
       D_dec -> L_s) rebuilds every stride; loss = MSE on the hidden real strides.
sizes: 15% of the real positions get a learned mask embedding instead of their value; a linear
       head predicts the size as a class in 0..MTU; cross-entropy on those positions.
IATs:  likewise; a linear head predicts the mapped value (1 + x) / (2 + x); MSE.
Padding is never chosen for masking and never scored. loss = L_bytes + L_sizes + L_iats.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netmamba.models import inputs
from netmamba.models.classifier import no_weight_decay
from netmamba.models.config import ModelConfig
from netmamba.models.encoder import Encoder, Segment, init_blocks, make_blocks, make_norm
from netmamba.models.layers import init_linear


def choose_masked(
    valid: torch.Tensor, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, n) bool: round(ratio * real) of each row's real positions, at random (at least one
    when the row has a real position and ratio > 0)."""
    real = valid.sum(dim=1)  # (B,)
    count = torch.round(real * ratio).long()
    if ratio > 0:
        count = torch.maximum(count, (real > 0).long())
    noise = torch.rand(valid.shape, generator=generator, device="cpu").to(valid.device)
    noise = noise.masked_fill(~valid, 2.0)  # padding sorts last, never chosen
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each position in its row
    return rank < count[:, None]


def choose_visible(
    valid: torch.Tensor, keep_ratio: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible strides: round(keep_ratio * real) per row (at least one), in sequence order.

    Returns (positions (B, K), kept (B, K) bool) with K the largest count in the batch; slots
    past a row's count are padding (kept False)."""
    real = valid.sum(dim=1)  # (B,)
    count = torch.minimum(torch.round(real * keep_ratio).long().clamp(min=1), real)  # (B,)
    noise = torch.rand(valid.shape, generator=generator, device="cpu").to(valid.device)
    noise = noise.masked_fill(~valid, 2.0)
    K = max(int(count.max()), 1)
    chosen = noise.argsort(dim=1)[:, :K]  # (B, K) random real positions first
    slot = torch.arange(K, device=valid.device)
    kept = slot < count[:, None]  # (B, K)
    # order the kept positions by sequence position; the unused slots go last
    key = torch.where(kept, chosen, chosen.new_full((), valid.shape[1]) + slot)
    order = key.argsort(dim=1)
    return chosen.gather(1, order), kept.gather(1, order)


class ByteDecoder(nn.Module):
    """Rebuilds every byte token from the encoder's visible ones (MAE decoder)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        Dd = config.decoder_dim
        self.n_tokens = config.n_byte_tokens
        self.embed = nn.Linear(config.d_model, Dd)
        self.mask_token = nn.Parameter(torch.zeros(Dd))
        self.pos_embed = nn.Parameter(torch.zeros(self.n_tokens + 1, Dd))  # strides + CLS
        self.blocks = make_blocks(config, Dd, config.decoder_depth)
        self.norm = make_norm(config, Dd)
        self.pred = nn.Linear(Dd, config.token_bytes)
        self.mask_padding = config.mask_padding
        init_linear(self)
        init_blocks(config, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(
        self,
        visible: torch.Tensor,  # (B, K, D) encoder outputs of the visible strides
        cls: torch.Tensor,  # (B, D) encoder output of the byte class token
        positions: torch.Tensor,  # (B, K) their stride positions
        kept: torch.Tensor,  # (B, K) bool
        valid: torch.Tensor,  # (B, n) bool: real strides
    ) -> torch.Tensor:
        batch = visible.shape[0]
        Dd = self.mask_token.shape[0]
        x = self.mask_token.expand(batch, self.n_tokens + 1, Dd).clone()  # (B, n + 1, Dd)
        rows = torch.arange(batch, device=visible.device)[:, None].expand_as(positions)
        x[rows[kept], positions[kept]] = self.embed(visible[kept])  # visible strides
        x[:, -1] = self.embed(cls)  # class token at the end
        x = x + self.pos_embed
        mask = torch.cat([valid, valid.new_ones(batch, 1)], dim=1) if self.mask_padding else None
        for block in self.blocks:
            x = block(x, mask)
        return self.pred(self.norm(x)[:, :-1])  # (B, n, bytes per token)


class Pretrainer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        D = config.d_model
        modalities = config.modalities
        if "bytes" in modalities:
            self.byte_decoder = ByteDecoder(config)
        if "sizes" in modalities:
            self.size_mask_token = nn.Parameter(torch.zeros(D))
            self.size_head = nn.Linear(D, config.size_classes)
        if "iats" in modalities:
            self.iat_mask_token = nn.Parameter(torch.zeros(D))
            self.iat_head = nn.Linear(D, 1)
        for name in ("size_head", "iat_head"):
            if hasattr(self, name):
                init_linear(getattr(self, name))
        for name in ("size_mask_token", "iat_mask_token"):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02)

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses of one masked-reconstruction step: loss, loss_bytes, loss_sizes, loss_iats.

        `generator` (a CPU torch.Generator) makes the masking reproducible."""
        config, enc = self.config, self.encoder
        tensors = inputs.batch_to_tensors(batch, self.device)
        inputs.check_batch(config, tensors)
        content = enc.content(tensors)  # modality -> (content, valid)
        zero = enc.pos_embed.new_zeros(())
        segments, hidden_masks, byte_view = [], {}, None
        for name, (values, valid) in content.items():
            if name == "bytes":
                positions, kept = choose_visible(valid, 1.0 - config.byte_mask_ratio, generator)
                tokens = enc.place(name, values, None)  # (B, n, D)
                visible = tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))
                segments.append(Segment(name, visible, kept))
                byte_view = (positions, kept, valid)
                continue
            ratio = config.size_mask_ratio if name == "sizes" else config.iat_mask_ratio
            hidden = choose_masked(valid, ratio, generator)  # (B, M_seq)
            token = self.size_mask_token if name == "sizes" else self.iat_mask_token
            values = torch.where(hidden[..., None], token, values)
            segments.append(Segment(name, enc.place(name, values), valid))
            hidden_masks[name] = hidden
        out = enc.encode(segments)
        losses = {"loss_bytes": zero, "loss_sizes": zero, "loss_iats": zero}

        if byte_view is not None:
            positions, kept, valid = byte_view
            start = out.starts["bytes"]
            visible = out.hidden[:, start : start + positions.shape[1]]  # (B, K, D)
            pred = self.byte_decoder(visible, out.cls["bytes"], positions, kept, valid)
            target = inputs.byte_token_values(config, tensors)  # (B, n, bytes per token)
            shown = torch.zeros_like(valid)
            shown.scatter_(1, positions, kept)
            scored = valid & ~shown  # hidden real strides
            error = (pred - target).pow(2).mean(dim=-1)  # (B, n)
            losses["loss_bytes"] = _masked_mean(error, scored)

        if "sizes" in hidden_masks:
            start = out.starts["sizes"]
            h = out.hidden[:, start : start + config.seq_len]  # (B, M_seq, D)
            scored = hidden_masks["sizes"]
            logits = self.size_head(h[scored])  # (masked, classes)
            target = inputs.size_targets(config, tensors)[scored]
            if target.numel():
                losses["loss_sizes"] = F.cross_entropy(logits, target)

        if "iats" in hidden_masks:
            start = out.starts["iats"]
            h = out.hidden[:, start : start + config.seq_len]
            pred = self.iat_head(h).squeeze(-1)  # (B, M_seq)
            error = (pred - inputs.iat_values(tensors)).pow(2)
            losses["loss_iats"] = _masked_mean(error, hidden_masks["iats"])

        losses["loss"] = losses["loss_bytes"] + losses["loss_sizes"] + losses["loss_iats"]
        return losses

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay (as Classifier.no_weight_decay)."""
        return no_weight_decay(self)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def build_pretrainer(config: ModelConfig) -> Pretrainer:
    """The pre-training model; its `.encoder` loads into a classifier of the same config."""
    return Pretrainer(config)
