"""Small building blocks shared by the backbones: RMSNorm, drop path, value embedding, init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight (no bias, no mean subtraction), as in Mamba."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(F, "rms_norm"):  # torch >= 2.4
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed value embedding of scalars (SPEC section 2), no parameters:
    SE(x, 2j) = sin(x / 10000^(2j/D)), SE(x, 2j+1) = cos(x / 10000^(2j/D)).  (..., ) -> (..., D)"""
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=values.device, dtype=torch.float32)
        * (-math.log(10000.0) / dim)
    )  # (D/2,)
    angles = values.float()[..., None] * freqs  # (..., D/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., D) interleaved


def init_linear(module: nn.Module) -> None:
    """Truncated-normal(0.02) weights and zero biases for every nn.Linear under `module`, except
    those marked `_keep_init` (the Mamba delta projection keeps its own initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and not getattr(m, "_keep_init", False):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_mamba_mixer(mixer: nn.Module, depth: int) -> None:
    """Mamba's own initialisation (mamba_ssm) of a mixer's projections, for narrow models where
    0.02 is far below 1 / sqrt(width): in_proj and x_proj as PyTorch's nn.Linear (uniform in
    +-1 / sqrt(fan_in)), out_proj the same divided by sqrt(depth) (GPT-2's scaling of residual
    branches). With 0.02 at D = 64, a block's output is ~1e-3 of its input, so class tokens
    start almost independent of the flow. dt_proj, A_log, D and the conv are left as they are.
    """
    for name in ("in_proj", "x_proj", "out_proj"):
        linear = getattr(mixer, name)
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))  # nn.Linear's default
    with torch.no_grad():
        mixer.out_proj.weight.div_(math.sqrt(depth))


def drop_path_rates(p: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to p over `depth` blocks."""
    if depth == 1:
        return [p]
    return [p * i / (depth - 1) for i in range(depth)]
