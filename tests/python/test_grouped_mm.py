"""Grouped expert products: grouped_mm and grouped_mm_weight_grad.

Compared with a float64 reference that multiplies one expert block at a time; gradients by
gradcheck; empty experts, an unread tail and every dtype; bad arguments rejected with
messages naming the tensor and the shapes; opcheck for the operator registrations.
"""

from __future__ import annotations

import pytest
import torch

from switchyard import ops

sy = torch.ops.switchyard


def ref_grouped_mm(a, b, counts, trans_b=False):
    out = torch.zeros(a.shape[0], b.shape[1] if trans_b else b.shape[2], dtype=torch.float64)
    start = 0
    for e, c in enumerate(counts.tolist()):
        w = b[e].double().T if trans_b else b[e].double()
        out[start : start + c] = a[start : start + c].double() @ w
        start += c
    return out


def ref_weight_grad(a, g, counts):
    out = torch.zeros(len(counts), a.shape[1], g.shape[1], dtype=torch.float64)
    start = 0
    for e, c in enumerate(counts.tolist()):
        out[e] = a[start : start + c].double().T @ g[start : start + c].double()
        start += c
    return out


def make(N, k, n, counts, dtype=torch.float32, trans_b=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    E = len(counts)
    a = torch.randn(N, k, generator=gen, dtype=torch.float64).to(dtype)
    shape = (E, n, k) if trans_b else (E, k, n)
    b = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
    return a, b, torch.tensor(counts, dtype=torch.int64)


# (N, k, n, counts): balanced, empty experts, a tail of unused rows, one expert, large blocks
CASES = [
    (6, 3, 5, [2, 2, 2]),
    (9, 4, 3, [0, 5, 0, 3]),  # empty experts and one unused row
    (10, 8, 8, [0, 0, 0]),  # nothing routed: all rows are tail
    (1, 1, 1, [1]),
    (700, 33, 17, [300, 0, 250, 100, 50]),  # several tiles per expert
]


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("N,k,n,counts", CASES)
def test_grouped_mm_matches_reference(N, k, n, counts, trans_b):
    a, b, c = make(N, k, n, counts, torch.float64, trans_b)
    a[sum(counts):] = float("nan")  # the tail is never read
    out = ops.grouped_mm(a, b, c, trans_b=trans_b)
    ref = ref_grouped_mm(a.nan_to_num(0.0), b, c, trans_b)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out[sum(counts):].eq(0).all()


@pytest.mark.parametrize("N,k,n,counts", CASES)
def test_weight_grad_matches_reference(N, k, n, counts):
    a, _, c = make(N, k, n, counts, torch.float64)
    g = torch.randn(N, n, dtype=torch.float64)
    a[sum(counts):] = float("nan")
    out = ops.grouped_mm_weight_grad(a, g, c)
    torch.testing.assert_close(out, ref_weight_grad(a.nan_to_num(0.0), g, c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_low_precision_dtypes(dtype, tol):
    a, b, c = make(64, 16, 24, [10, 0, 30, 20], dtype)
    out = ops.grouped_mm(a, b, c)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_grouped_mm(a, b, c), rtol=tol, atol=tol * 8)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gradcheck(trans_b):
    a, b, c = make(11, 3, 4, [4, 0, 6], torch.float64, trans_b)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.grouped_mm(a, b, c, trans_b=trans_b), (a, b))


def test_results_do_not_depend_on_thread_count():
    a, b, c = make(2000, 64, 48, [700, 0, 900, 400], torch.float32)
    g = torch.randn(2000, 48)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.grouped_mm(a, b, c), ops.grouped_mm_weight_grad(a, g, c)
        torch.set_num_threads(2)
        two = ops.grouped_mm(a, b, c), ops.grouped_mm_weight_grad(a, g, c)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one[0], two[0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(one[1], two[1], rtol=1e-6, atol=1e-4)


def test_opcheck():
    a, b, c = make(12, 4, 5, [5, 0, 6], torch.float32)
    torch.library.opcheck(sy.grouped_mm.default, (a.requires_grad_(), b.requires_grad_(), c), {"trans_b": False})
    torch.library.opcheck(sy.grouped_mm_weight_grad.default, (a.detach(), torch.randn(12, 5), c))


@pytest.mark.parametrize(
    "args,message",
    [
        ((torch.randn(4, 3, 1), torch.randn(2, 3, 5), torch.tensor([2, 2])), "a to be a 2-D [N, k]"),
        ((torch.randn(4, 3), torch.randn(3, 5), torch.tensor([2, 2])), "b to be a 3-D [E, k, n]"),
        ((torch.randn(4, 3), torch.randn(2, 4, 5), torch.tensor([2, 2])), "k = 3"),
        ((torch.randn(4, 3), torch.randn(3, 3, 5), torch.tensor([2, 2])), "one count per expert of b (E = 3)"),
        ((torch.randn(4, 3), torch.randn(2, 3, 5), torch.tensor([2.0, 2.0])), "counts to be a 1-D int64"),
        ((torch.randn(4, 3), torch.randn(2, 3, 5).double(), torch.tensor([2, 2])), "b to have a's dtype"),
        ((torch.randn(4, 3), torch.randn(2, 3, 5), torch.tensor([3, 2])), "sum to 5 rows but a has only 4"),
        ((torch.randn(4, 3), torch.randn(2, 3, 5), torch.tensor([-1, 2])), "counts >= 0"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(RuntimeError) as info:
        ops.grouped_mm(*args)
    assert message in str(info.value)


def test_weight_grad_bad_grad_shape():
    with pytest.raises(RuntimeError, match=r"grad_out to be a 2-D \[N, n\] tensor with N = 4"):
        ops.grouped_mm_weight_grad(torch.randn(4, 3), torch.randn(5, 2), torch.tensor([2, 2]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trans_b", [False, True])
def test_cuda_matches_cpu(dtype, trans_b):
    a, b, c = make(300, 64, 32, [100, 0, 150, 20], dtype, trans_b)
    g = torch.randn(300, 64 if trans_b else 32).to(dtype)
    out = ops.grouped_mm(a.cuda(), b.cuda(), c.cuda(), trans_b=trans_b).cpu()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), ref_grouped_mm(a, b, c, trans_b), rtol=tol, atol=tol * 8)
    wg = ops.grouped_mm_weight_grad(a.cuda(), g.cuda(), c.cuda()).cpu()
    torch.testing.assert_close(wg.double(), ref_weight_grad(a, g, c), rtol=tol, atol=tol * 30)
    assert wg[1].eq(0).all()
