"""The experts' fused SwiGLU activation: swiglu and swiglu_backward.

Compared with silu(g) * u computed in float64 by ATen; gradients by gradcheck; extreme
inputs stay finite; bad arguments rejected with messages naming the tensor.
"""

from __future__ import annotations

import pytest
import torch

import switchyard  # noqa: F401  (registers torch.ops.switchyard.*)

sy = torch.ops.switchyard


def inputs(shape, dtype, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    u = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    return g, u


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)]
)
@pytest.mark.parametrize("shape", [(0,), (7,), (33, 65), (300, 257)])
def test_forward_and_backward_match_float64(shape, dtype, tol):
    g, u = inputs(shape, dtype)
    grad_h = torch.randn(*shape, dtype=torch.float64).to(dtype)
    gd, ud = g.double().requires_grad_(), u.double().requires_grad_()
    ref = torch.nn.functional.silu(gd) * ud
    ref.backward(grad_h.double())

    h = sy.swiglu(g, u)
    torch.testing.assert_close(h.double(), ref.detach(), rtol=tol, atol=tol)
    h2, grad_g, grad_u = sy.swiglu_backward(grad_h, g, u)
    torch.testing.assert_close(h2, h, rtol=0, atol=0)
    torch.testing.assert_close(grad_g.double(), gd.grad, rtol=tol, atol=tol * 4)
    torch.testing.assert_close(grad_u.double(), ud.grad, rtol=tol, atol=tol * 4)


def test_gradcheck():
    g, u = inputs((5, 6), torch.float64)
    assert torch.autograd.gradcheck(sy.swiglu, (g.requires_grad_(), u.requires_grad_()))


def test_extreme_gates_stay_finite():
    g = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    u = torch.ones_like(g)
    h, grad_g, grad_u = sy.swiglu_backward(torch.ones_like(g), g, u)
    for t in (h, grad_g, grad_u):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(h, torch.nn.functional.silu(g))


def test_non_contiguous_inputs():
    g, u = inputs((16, 8), torch.float32)
    torch.testing.assert_close(sy.swiglu(g.t(), u.t()), torch.nn.functional.silu(g.t()) * u.t())


def test_opcheck():
    g, u = inputs((4, 5), torch.float32)
    torch.library.opcheck(sy.swiglu.default, (g.requires_grad_(), u.requires_grad_()))
    torch.library.opcheck(sy.swiglu_backward.default, (torch.randn(4, 5), g.detach(), u.detach()))


def test_bad_arguments():
    with pytest.raises(RuntimeError, match=r"swiglu: expected up to have gate's shape \[4, 5\], got \[4, 6\]"):
        sy.swiglu(torch.randn(4, 5), torch.randn(4, 6))
    with pytest.raises(RuntimeError, match="expected up to have gate's dtype Float, got Double"):
        sy.swiglu(torch.randn(3), torch.randn(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="expected grad_h like gate"):
        sy.swiglu_backward(torch.randn(2), torch.randn(3), torch.randn(3))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_matches_cpu(dtype):
    g, u = inputs((129, 67), dtype)
    grad_h = torch.randn(129, 67).to(dtype)
    cpu = sy.swiglu_backward(grad_h, g, u)
    gpu = sy.swiglu_backward(grad_h.cuda(), g.cuda(), u.cuda())
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=tol, atol=tol)
