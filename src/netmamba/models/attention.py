"""The NetTrans block: pre-norm multi-head self-attention and a gated (GeGLU) feed-forward.

block = x + drop_path(dropout(attention(LayerNorm(x))))
          + drop_path(dropout(W_out (a * GELU(g)))), (a, g) = W_in LayerNorm(x)
Attention is exact, through torch.nn.functional.scaled_dot_product_attention (flash kernels on
CUDA and CPU); padded keys are masked out, so padding never changes a real token's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netmamba.models.layers import DropPath


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), valid (B, L) bool or None -> (B, L, D)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, dim // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D/H)
        mask = valid[:, None, None, :] if valid is not None else None  # (B, 1, 1, L) keys
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, D/H)
        return self.out(o.transpose(1, 2).reshape(batch, length, dim))  # (B, L, D)


class GeGLU(nn.Module):
    """W_out (a * GELU(g)) with (a, g) = W_in x."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(d_model, 2 * hidden)
        self.proj_out = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)  # (B, L, hidden) each
        return self.proj_out(a * F.gelu(gate))  # (B, L, D)


class AttentionBlock(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int = 8,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.attn = SelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ffn = GeGLU(d_model, ffn_mult * d_model)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.dropout(self.attn(self.norm1(x), valid)))  # (B, L, D)
        return x + self.drop_path(self.dropout(self.ffn(self.norm2(x))))  # (B, L, D)
