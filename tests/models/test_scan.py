"""The selective scan: native kernel and PyTorch fallback against the sequential reference."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from netmamba.models import native, scan
from netmamba.models.scan import selective_scan, selective_scan_reference

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built")

# (batch, L, E, N): length 1, odd lengths, channel counts that are not a multiple of the
# kernel's 32 / 16 / 8-channel blocks, small and paper-sized state counts.
SHAPES = [(1, 1, 5, 3), (2, 17, 40, 16), (3, 33, 64, 4), (1, 50, 70, 16), (2, 9, 33, 1)]


def make_inputs(batch, length, channels, states, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale + shift

    return {
        "u": randn(batch, length, channels),
        "delta": randn(batch, length, channels, scale=0.5, shift=-1.0),
        "A": -torch.exp(randn(channels, states, scale=0.5)),
        "B": randn(batch, length, states),
        "C": randn(batch, length, states),
        "D": randn(channels),
        "z": randn(batch, length, channels),
        "delta_bias": randn(channels, scale=0.1),
    }


def random_mask(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=g) > 0.3
    mask[:, -1] = True
    return mask


def run(impl, x, mask, softplus=True, **drop):
    kwargs = {k: v for k, v in x.items() if k not in drop}
    return selective_scan(**kwargs, delta_softplus=softplus, mask=mask, impl=impl)


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", ["full", "no_z_no_D", "no_bias_no_softplus", "no_mask"])
def test_native_matches_reference_outputs_and_all_gradients(shape, options):
    x = make_inputs(*shape)
    mask = None if options == "no_mask" else random_mask(shape[0], shape[1])
    drop = {"full": (), "no_z_no_D": ("z", "D"), "no_bias_no_softplus": ("delta_bias",)}.get(
        options, ()
    )
    softplus = options != "no_bias_no_softplus"
    if not softplus:  # delta must then be positive already, else the state grows without bound
        x["delta"] = F.softplus(x["delta"])
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if k not in drop}
    out = run("native", leaves, mask, softplus)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)

    # the reference in float64, so the tolerance measures the kernel's float32 error only
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    ref = selective_scan_reference(**ref_leaves, delta_softplus=softplus, mask=mask)
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), grad_out.double())

    def close(a, b, name):
        scale = b.abs().max().item() + 1e-6
        err = (a.double() - b).abs().max().item() / scale
        assert err < 2e-5, f"{name}: relative error {err:.2e}"

    close(out, ref, "output")
    for name, g, r in zip(leaves, grads, ref_grads, strict=True):
        close(g, r, f"d{name}")


@needs_native
def test_native_gradcheck_float64():
    x = {k: v.requires_grad_() for k, v in make_inputs(2, 6, 5, 3, dtype=torch.float64).items()}
    mask = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    names = list(x)

    def fn(*tensors):
        return selective_scan(
            **dict(zip(names, tensors, strict=True)), delta_softplus=True, mask=mask, impl="native"
        )

    assert torch.autograd.gradcheck(fn, tuple(x.values()))


def test_reference_is_the_recurrence_written_out():
    # one channel, one state, no softplus: h_t = exp(d_t a) h_{t-1} + d_t b_t u_t, y_t = c_t h_t
    u = torch.tensor([[[1.0], [2.0], [-1.0]]])
    delta = torch.tensor([[[0.5], [1.0], [0.25]]])
    A = torch.tensor([[-2.0]])
    B = torch.tensor([[[1.0], [0.5], [2.0]]])
    C = torch.tensor([[[1.0], [2.0], [3.0]]])
    h1 = 0.5 * 1.0 * 1.0
    h2 = torch.exp(torch.tensor(-2.0)) * h1 + 1.0 * 0.5 * 2.0
    h3 = torch.exp(torch.tensor(-0.5)) * h2 + 0.25 * 2.0 * -1.0
    expected = torch.tensor([1.0 * h1, 2.0 * h2, 3.0 * h3]).reshape(1, 3, 1)
    torch.testing.assert_close(selective_scan_reference(u, delta, A, B, C), expected)


def test_masked_positions_leave_the_state_unchanged():
    x = make_inputs(1, 6, 4, 3)
    mask = torch.tensor([[True, True, False, False, True, True]])
    masked = selective_scan_reference(**x, delta_softplus=True, mask=mask)
    # the same scan on the sequence without positions 2 and 3 gives the same outputs at the
    # real positions (their y only reads the state, which the padding did not touch)
    keep = [0, 1, 4, 5]
    short = {k: (v[:, keep] if v.dim() == 3 and k != "A" else v) for k, v in x.items()}
    removed = selective_scan_reference(**short, delta_softplus=True)
    torch.testing.assert_close(masked[:, keep], removed)


@pytest.mark.parametrize("shape", [(2, 9, 12, 4), (1, 70, 8, 16)])
def test_torch_fallback_matches_reference(shape):
    x = make_inputs(*shape)
    mask = random_mask(shape[0], shape[1])
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = run("torch", leaves, mask)
    out.sum().backward()
    ref_leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref = selective_scan_reference(**ref_leaves, delta_softplus=True, mask=mask)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-4, atol=1e-4)


@needs_native
def test_native_reads_strided_views_in_place():
    # in the mixer, u and z are the two halves of one (B, L, 2E) tensor, B and C slices of x_proj
    x = make_inputs(2, 7, 16, 4)
    xz = torch.randn(2, 7, 32)
    dbl = torch.randn(2, 7, 3 + 8)
    x.update(u=xz[..., :16], z=xz[..., 16:], B=dbl[..., 3:7], C=dbl[..., 7:])
    out = run("native", x, None)
    contiguous = {k: v.contiguous() for k, v in x.items()}
    torch.testing.assert_close(out, run("reference", contiguous, None), rtol=1e-5, atol=1e-5)


@needs_native
def test_native_computes_other_float_types_in_float32():
    x = {k: v.to(torch.bfloat16) for k, v in make_inputs(1, 5, 8, 2).items()}
    out = run("native", x, None)
    assert out.dtype == torch.bfloat16
    ref = run("reference", {k: v.float() for k, v in x.items()}, None)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_implementation_can_be_forced_by_environment(monkeypatch):
    x = make_inputs(1, 4, 3, 2)
    calls = []
    monkeypatch.setattr(scan, "selective_scan_reference", lambda *a: calls.append(a) or a[0])
    monkeypatch.setenv(scan.ENV_VAR, "reference")
    selective_scan(**x)
    assert len(calls) == 1


def test_unknown_implementation_is_a_clear_error(monkeypatch):
    x = make_inputs(1, 4, 3, 2)
    with pytest.raises(ValueError, match="unknown selective-scan implementation 'fast'"):
        selective_scan(**x, impl="fast")
    monkeypatch.setenv(scan.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="NETMAMBA_SCAN"):
        selective_scan(**x)


def test_missing_native_kernel_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    x = make_inputs(1, 4, 3, 2)
    with pytest.raises(RuntimeError, match="not built"):
        selective_scan(**x, impl="native")
    assert scan.default_implementation("cpu") == "torch"
    torch.testing.assert_close(
        selective_scan(**x), selective_scan_reference(**x), rtol=1e-5, atol=1e-6
    )


def test_cuda_path_passes_mamba_ssm_its_own_layout(monkeypatch):
    """mamba_ssm's selective_scan_fn takes (batch, E, L) and (batch, N, L); a fake module that
    computes with the reference in that layout shows our transposes are right."""

    def fake_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        assert u.shape[1] == A.shape[0] and B.shape[1] == A.shape[1]  # (b, E, L), (b, N, L)
        y = selective_scan_reference(
            u.transpose(1, 2),
            delta.transpose(1, 2),
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D,
            z.transpose(1, 2) if z is not None else None,
            delta_bias,
            delta_softplus,
        )
        return y.transpose(1, 2)

    module = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    module.selective_scan_fn = fake_scan_fn
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    scan._mamba_ssm_scan.cache_clear()
    try:
        x = make_inputs(2, 5, 6, 3)
        for mask in (None, random_mask(2, 5)):
            out = run("cuda", x, mask)
            torch.testing.assert_close(out, run("reference", x, mask), rtol=1e-5, atol=1e-6)
    finally:
        scan._mamba_ssm_scan.cache_clear()


def test_prepare_delta_applies_bias_softplus_and_mask():
    delta = torch.tensor([[[0.0, 1.0], [-1.0, 2.0]]])
    bias = torch.tensor([0.5, -0.5])
    mask = torch.tensor([[True, False]])
    out = scan.prepare_delta(delta, bias, True, mask)
    expected = torch.tensor(
        [[[F.softplus(torch.tensor(0.5)), F.softplus(torch.tensor(0.5))], [0.0, 0.0]]]
    )
    torch.testing.assert_close(out, expected)
