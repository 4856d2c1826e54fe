"""The causal depthwise conv: native kernel against torch's conv1d, and its exact semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netmamba.models import native
from netmamba.models.conv import causal_conv1d, causal_conv1d_reference

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built")


def test_reference_by_hand():
    # one channel, kernel [w0, w1, w2] over x = [1, 2, 3, 4]: s_t = b + w0 x_{t-2} + w1 x_{t-1}
    # + w2 x_t, with x_{-1} = x_{-2} = 0; position 1 is masked (counts as 0)
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    w = torch.tensor([[0.5, -1.0, 2.0]])
    b = torch.tensor([0.25])
    mask = torch.tensor([[True, False, True, True]])
    pre = torch.tensor([0.25 + 2.0, 0.25 - 1.0 + 0.0, 0.25 + 0.5 + 0.0 + 6.0, 0.25 + 0 - 3 + 8])
    out = causal_conv1d_reference(x, w, b, mask, silu=False)
    torch.testing.assert_close(out.flatten(), pre)
    torch.testing.assert_close(causal_conv1d_reference(x, w, b, mask).flatten(), F.silu(pre))


@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 17, 64), (3, 30, 70), (1, 5, 129)])
@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_native_matches_reference_outputs_and_gradients(shape, width, masked):
    batch, length, channels = shape
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(batch, length, 2 * channels, generator=g)
    x = xz[..., :channels].requires_grad_()  # a strided view, as in the mixer
    w = torch.randn(channels, 1, width, generator=g, requires_grad=True)
    b = torch.randn(channels, generator=g, requires_grad=True)
    mask = torch.rand(batch, length, generator=g) > 0.3 if masked else None
    out = causal_conv1d(x, w, b, mask, impl="native")
    grad = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, [x, w, b], grad)
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = causal_conv1d_reference(*refs, mask)
    ref_grads = torch.autograd.grad(ref, refs, grad.double())
    for got, want in zip([out, *grads], [ref, *ref_grads], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 1, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda *t: causal_conv1d(*t, mask, impl="native"), (x, w, b))


@needs_native
def test_native_rejects_kernel_wider_than_64():
    x = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="kernel widths from 1 to 64"):
        causal_conv1d(x, torch.randn(3, 1, 65), None, impl="native")
