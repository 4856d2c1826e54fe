"""The NetMamba block (Mamba-1, unidirectional).

block = x + drop_path(mixer(RMSNorm(x)))        (residual stream kept in float32)
mixer = in_proj D -> 2E (x, z) -> causal depthwise conv + SiLU on x -> x_proj to (dt, B, C) ->
        delta = softplus(dt_proj(dt)) -> selective scan (A = -exp(A_log), skip D) -> y * SiLU(z)
        -> out_proj E -> D
Padding (valid = False) is a neutral input: its x is zeroed before the conv and its delta is 0,
so it neither updates the state nor reaches a real position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from netmamba.models.conv import causal_conv1d
from netmamba.models.layers import DropPath, RMSNorm
from netmamba.models.scan import selective_scan


class MambaMixer(nn.Module):
    """Mamba-1 mixer; parameter names follow mamba_ssm (in_proj, conv1d, x_proj, dt_proj, A_log,
    D, out_proj) so checkpoints map one to one."""

    def __init__(
        self,
        d_model: int,  # D
        d_state: int = 16,  # N
        expand: int = 2,  # E = expand * D
        d_conv: int = 4,
        dt_rank: int | None = None,  # R, default ceil(D / 16)
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.dt_proj._keep_init = True  # type: ignore[assignment]
        self.out_proj = nn.Linear(E, d_model, bias=False)
        # Mamba's initialisation: dt_proj weight uniform(+-R^-1/2); its bias the inverse softplus
        # of a log-uniform dt in [dt_min, dt_max], so softplus(bias) starts at that dt.
        std = R**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A[e, n] = -(n + 1)
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1)  # (E, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), valid (B, L) bool or None -> (B, L, D)."""
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        xz = self.in_proj(x)  # (B, L, 2E)
        xs, z = xz[..., :E], xz[..., E:]  # (B, L, E) each, views
        xs = causal_conv1d(xs, self.conv1d.weight, self.conv1d.bias, mask=valid)  # (B, L, E)
        x_dbl = self.x_proj(xs)  # (B, L, R + 2N)
        dt, B, C = x_dbl[..., :R], x_dbl[..., R : R + N], x_dbl[..., R + N :]
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E); its bias is added inside the scan
        A = -torch.exp(self.A_log.float())  # (E, N)
        y = selective_scan(
            xs, dt, A, B, C, self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, mask=valid,
        )  # (B, L, E)  # fmt: skip
        return self.out_proj(y)  # (B, L, D)


class MambaBlock(nn.Module):
    """RMSNorm pre-norm -> Mamba mixer -> drop path -> residual (float32)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = MambaMixer(d_model, d_state, expand, d_conv, dt_rank)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D) float32 residual stream -> (B, L, D)."""
        h = self.mixer(self.norm(x), valid)  # (B, L, D)
        return x + self.drop_path(h).float()
