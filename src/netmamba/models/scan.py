"""Selective scan (the SSM of Mamba-1) behind one function, with four implementations.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t        (per channel e, state n)
    y_t = C_t . h_t + D u_t,   out_t = y_t * silu(z_t)

Layout: u, delta, z and the output are (batch, L, E) (channels last, as the linear layers
produce them); A is (E, N); B and C are (batch, L, N); D and delta_bias are (E,).

Implementations, chosen by `impl` (or the NETMAMBA_SCAN environment variable):
- "native": the C kernel of `csrc/selective_scan.c` (forward and backward, float32/float64,
  on torch's threads, bias/softplus/mask/gate fused), the default on CPU. It never stores the
  batch x L x E x N tensor; see that file for why it is fast.
- "cuda": the `mamba_ssm` CUDA kernels, the default for GPU tensors when it is installed.
- "torch": a PyTorch fallback (chunks of positions, a Python loop inside each chunk), used when
  the native kernel was not built.
- "reference": `selective_scan_reference`, a plain sequential loop; tests compare against it.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from netmamba.models import native

IMPLEMENTATIONS = ("auto", "native", "cuda", "torch", "reference")
ENV_VAR = "NETMAMBA_SCAN"


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    mask: torch.Tensor | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """The selective scan of Mamba-1; returns (batch, L, E).

    delta is first shifted by `delta_bias` and passed through softplus when asked (as in
    Mamba), then zeroed where `mask` (batch, L) is False: a masked position leaves the state
    unchanged and feeds nothing into it, so padding is a neutral input.
    `impl` forces an implementation (see the module docstring); None reads NETMAMBA_SCAN and
    falls back to "auto".
    """
    name = _choose(u, impl)
    if name == "native":  # bias, softplus and mask are fused into the kernel
        return _scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask)
    if name == "cuda" and mask is None:
        return _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    delta = prepare_delta(delta, delta_bias, delta_softplus, mask)
    if name == "cuda":
        return _scan_cuda(u, delta, A, B, C, D, z, None, False)
    if name == "torch":
        return _scan_torch(u, delta, A, B, C, D, z)
    return selective_scan_reference(u, delta, A, B, C, D, z)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain sequential selective scan, one position at a time (slow; the definition)."""
    delta = prepare_delta(delta, delta_bias, delta_softplus, mask)
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])  # (b, E, N)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, E, N)
        h = decay * h + (delta[:, t, :, None] * u[:, t, :, None]) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # (b, E)
    y = torch.stack(ys, dim=1)  # (b, L, E)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def prepare_delta(
    delta: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """delta + bias, softplus, zeroed where mask is False (all optional)."""
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    if mask is not None:
        delta = delta * mask[..., None].to(delta.dtype)
    return delta


def native_available() -> bool:
    """True when the C kernel is built and loadable."""
    return native.available()


def default_implementation(device: torch.device | str = "cpu") -> str:
    """The implementation "auto" picks for tensors on `device`."""
    return _choose(torch.empty(0, device=device), "auto")


def _choose(u: torch.Tensor, impl: str | None) -> str:
    name = impl or os.environ.get(ENV_VAR) or "auto"
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown selective-scan implementation {name!r} (from "
            f"{'the impl argument' if impl else ENV_VAR}); "
            f"choose one of {', '.join(IMPLEMENTATIONS)}"
        )
    if name == "auto":
        if u.is_cuda:
            return "cuda" if _mamba_ssm_scan() is not None else "torch"
        return "native" if u.device.type == "cpu" and native_available() else "torch"
    if name == "native" and not native_available():
        raise RuntimeError(
            "the native selective-scan kernel is not built (or disabled by NETMAMBA_NO_NATIVE); "
            "reinstall netmamba with a C compiler present, or use impl='torch'"
        )
    if name == "native" and u.device.type != "cpu":
        raise RuntimeError(f"the native selective-scan kernel runs on CPU tensors, not {u.device}")
    if name == "cuda" and _mamba_ssm_scan() is None:
        raise RuntimeError(
            "the CUDA selective scan needs mamba-ssm (pip install 'netmamba[cuda]') and a GPU"
        )
    return name


# ---- CUDA: mamba_ssm ----------------------------------------------------------------------


@functools.cache
def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed without a working CUDA build
        return None
    return selective_scan_fn


def _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba_ssm wants (batch, E, L) and (batch, N, L); we hold (batch, L, E) / (batch, L, N)."""
    scan_fn = _mamba_ssm_scan()
    y = scan_fn(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        D.float() if D is not None else None,
        z=z.transpose(1, 2) if z is not None else None,
        delta_bias=delta_bias.float() if delta_bias is not None else None,
        delta_softplus=delta_softplus,
    )
    return y.transpose(1, 2)


# ---- PyTorch fallback -----------------------------------------------------------------------


def _scan_torch(u, delta, A, B, C, D, z, chunk: int = 32):
    """Chunks of `chunk` positions: exp and inputs for a chunk at once, then a short loop.

    It holds batch x chunk x E x N values at a time (autograd keeps one such block per chunk),
    so it is for machines without the native kernel, not for speed.
    """
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])  # (b, E, N)
    ys = []
    for t0 in range(0, length, chunk):
        t1 = min(t0 + chunk, length)
        d = delta[:, t0:t1, :, None]  # (b, T, E, 1)
        decay = torch.exp(d * A)  # (b, T, E, N)
        inputs = d * u[:, t0:t1, :, None] * B[:, t0:t1, None, :]  # (b, T, E, N)
        states = []
        for t in range(t1 - t0):
            h = decay[:, t] * h + inputs[:, t]
            states.append(h)
        ys.append(torch.einsum("bten,btn->bte", torch.stack(states, 1), C[:, t0:t1]))
    y = torch.cat(ys, dim=1)  # (b, L, E)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


# ---- native C kernel (models/native.py) ---------------------------------------------------


def _scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask):
    return native.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask)
