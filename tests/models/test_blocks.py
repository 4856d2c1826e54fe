"""The Mamba mixer and the attention block against plain re-implementations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from netmamba.models.attention import SelfAttention
from netmamba.models.mamba import MambaMixer
from netmamba.models.scan import selective_scan_reference


def test_mamba_initialisation():
    torch.manual_seed(0)
    mixer = MambaMixer(64, d_state=8)
    assert mixer.dt_rank == 4 and mixer.d_inner == 128
    # S4D-real: A = -(1..N) on every channel
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 9.0).repeat(128, 1))
    # softplus(dt bias) is the sampled dt, in [1e-3, 1e-1] (the authors' code zeroes this bias)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = 4**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound
    assert torch.equal(mixer.D, torch.ones(128))


def test_mamba_mixer_is_the_mamba_recipe_step_by_step():
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4).eval()
    x = torch.randn(2, 7, 16)
    valid = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = mixer(x, valid)
        E, N, R = 32, 4, 1
        xz = x @ mixer.in_proj.weight.T
        xs, z = xz[..., :E] * valid[..., None], xz[..., E:]
        conv = F.conv1d(
            xs.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias, padding=3, groups=E
        )
        xs = F.silu(conv[..., :7]).transpose(1, 2)
        dbl = xs @ mixer.x_proj.weight.T
        delta = (
            F.softplus(dbl[..., :R] @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
            * valid[..., None]
        )
        y = selective_scan_reference(
            xs, delta, -torch.exp(mixer.A_log), dbl[..., R : R + N], dbl[..., R + N :], mixer.D, z
        )
        want = y @ mixer.out_proj.weight.T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_attention_is_masked_softmax_attention():
    torch.manual_seed(0)
    attn = SelfAttention(12, n_heads=3).eval()
    x = torch.randn(2, 5, 12)
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = attn(x, valid)
        q, k, v = (x @ attn.qkv.weight.T).chunk(3, dim=-1)

        def heads(t):
            return t.reshape(2, 5, 3, 4).transpose(1, 2)

        scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 5, 12)
        want = out @ attn.out.weight.T + attn.out.bias
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
