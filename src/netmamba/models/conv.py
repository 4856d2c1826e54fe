"""Causal depthwise conv1d of the Mamba mixer, in the (batch, L, channels) layout.

    s_t = bias + sum_j w[:, j] * (x * m)_{t - (K-1) + j},    out_t = silu(s_t)

Positions before the start and positions where the mask m is False count as zeros, so padding
content never reaches a real position. Implementations: the native kernel (csrc/selective_scan.c,
default on CPU; nn.Conv1d's depthwise path on this layout costs more than all of the layer's
matrix multiplies) and `causal_conv1d_reference` (nn.functional.conv1d; GPUs and tests).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from netmamba.models import native

ENV_VAR = "NETMAMBA_CONV"


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    silu: bool = True,
    impl: str | None = None,
) -> torch.Tensor:
    """x (batch, L, C); weight (C, K) or (C, 1, K) as nn.Conv1d holds it; mask (batch, L) bool.

    `impl` is "native", "reference" or None (NETMAMBA_CONV, else native when it can run).
    """
    name = impl or os.environ.get(ENV_VAR) or "auto"
    if name not in ("auto", "native", "reference"):
        raise ValueError(f"unknown causal-conv implementation {name!r}; use native or reference")
    if name == "auto":
        name = "native" if native.available() and native.supports(x) else "reference"
    if name == "native":
        if not native.available():
            raise RuntimeError("the native causal-conv kernel is not built; use impl='reference'")
        return native.causal_conv1d(x, weight, bias, mask, silu)
    return causal_conv1d_reference(x, weight, bias, mask, silu)


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """The same operation through torch.nn.functional.conv1d."""
    channels, length = x.shape[-1], x.shape[1]
    weight = weight.reshape(channels, 1, -1)  # (C, 1, K)
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    out = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=channels)
    out = out[..., :length].transpose(1, 2)  # (batch, L, C)
    return F.silu(out) if silu else out
