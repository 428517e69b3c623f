"""MoE++ zero-computation experts: zero, copy and constant experts.

Compared with an independent float64 reference that loops over tokens and slots; checked
with gradcheck (w.r.t. every differentiable input) and opcheck; bad arguments rejected with
messages that name them.
"""

from __future__ import annotations

import pytest
import torch

import switchyard
from switchyard import ops

sy = torch.ops.switchyard


def ref_zero_compute(x, w, ids, first, num_zero, num_copy, V, G):
    """y_t = sum_j w_tj E_{ids_tj}(x_t), one token and one slot at a time, in float64."""
    x, w, V, G = (a.detach().double() for a in (x, w, V, G))
    T, d = x.shape
    Nc = V.shape[0]
    first_copy, first_const = first + num_zero, first + num_zero + num_copy
    y = torch.zeros(T, d, dtype=torch.float64)
    for t in range(T):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if first <= e < first_copy:
                continue  # zero expert: discards the token
            if first_copy <= e < first_const:
                y[t] += w[t, j] * x[t]  # copy expert
            elif first_const <= e < first_const + Nc:
                i = e - first_const
                g0 = float((G[i, 0] * x[t]).sum())
                g1 = float((G[i, 1] * x[t]).sum())
                m = max(g0, g1)
                e0, e1 = torch.exp(torch.tensor(g0 - m)), torch.exp(torch.tensor(g1 - m))
                a1, a2 = e0 / (e0 + e1), e1 / (e0 + e1)
                y[t] += w[t, j] * (a1 * x[t] + a2 * V[i])
    return y


def make_inputs(T, d, K, E, Nc, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g, dtype=torch.float64).to(dtype)
    w = torch.rand(T, K, generator=g, dtype=torch.float64).to(dtype)
    ids = torch.randint(0, E, (T, K), generator=g)
    V = torch.randn(Nc, d, generator=g, dtype=torch.float64).to(dtype)
    G = torch.randn(Nc, 2, d, generator=g, dtype=torch.float64).to(dtype)
    for t in (x, w, V, G):
        t.requires_grad_(requires_grad)
    return x, w, ids, V, G


# (T, d, K, E, first_expert, num_zero, num_copy, Nc): E router outputs, the zero-computation
# experts at the end (ids first .. first + Z + Cp + Nc - 1) or in the middle.
CASES = [
    (1, 1, 1, 1, 0, 0, 0, 1),  # a single constant expert
    (6, 4, 2, 8, 5, 1, 1, 1),  # MoE++ layout: routed 0-4, zero 5, copy 6, constant 7
    (10, 3, 3, 9, 2, 2, 2, 3),  # zero-computation experts in the middle of the ids
    (7, 5, 4, 4, 0, 1, 2, 1),  # K == E, every expert is zero-computation
    (8, 6, 2, 6, 4, 1, 1, 0),  # no constant experts (Nc = 0)
    (5, 2, 2, 3, 3, 0, 0, 0),  # no zero-computation experts at all: zeros
]


@pytest.mark.parametrize("T,d,K,E,first,Z,Cp,Nc", CASES)
def test_zero_compute_experts_matches_reference(T, d, K, E, first, Z, Cp, Nc):
    x, w, ids, V, G = make_inputs(T, d, K, E, Nc)
    out = sy.zero_compute_experts(x, w, ids, first, Z, Cp, V, G)
    assert out.shape == (T, d) and out.dtype == torch.float32
    expected = ref_zero_compute(x, w, ids, first, Z, Cp, V, G)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    wrapped = ops.zero_compute_experts(x, w, ids, first, Z, Cp, V, G, num_experts=E)
    assert torch.equal(wrapped, out)


def test_each_kind_of_expert():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 2.0]], dtype=torch.float64)
    V = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    G = torch.zeros(1, 2, 2, dtype=torch.float64)  # gate logits 0, 0: a1 = a2 = 1/2
    w = torch.full((4, 1), 0.5, dtype=torch.float64)
    ids = torch.tensor([[0], [1], [2], [3]])  # expert 0 routed, 1 zero, 2 copy, 3 constant
    out = sy.zero_compute_experts(x, w, ids, 1, 1, 1, V, G)
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.25, 0.25], [0.5 * (1.0 + 5.0), 0.5 * (1.0 + 10.0)]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_several_slots_on_zero_compute_experts_add_up():
    x = torch.randn(3, 4, dtype=torch.float64)
    V, G = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    ids = torch.tensor([[2, 2, 4], [3, 4, 5], [0, 1, 2]])  # zero 1, copy 2, constants 3-4; 0, 5 other
    w = torch.rand(3, 3, dtype=torch.float64)
    out = sy.zero_compute_experts(x, w, ids, 1, 1, 1, V, G)
    torch.testing.assert_close(out, ref_zero_compute(x, w, ids, 1, 1, 1, V, G))


def test_zero_tokens():
    x, w, ids, V, G = make_inputs(0, 4, 2, 6, 1, requires_grad=True)
    out = sy.zero_compute_experts(x, w, ids, 3, 1, 1, V, G)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert V.grad.abs().sum() == 0 and G.grad.abs().sum() == 0


def test_weights_are_cast_to_the_dtype_of_x():
    x, w, ids, V, G = make_inputs(6, 4, 2, 5, 1, dtype=torch.bfloat16)
    out = sy.zero_compute_experts(x, w.float(), ids, 2, 1, 1, V, G)
    assert out.dtype == torch.bfloat16
    expected = ref_zero_compute(x, w, ids, 2, 1, 1, V, G)
    torch.testing.assert_close(out.double(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("Nc", [0, 2])
def test_gradcheck_all_inputs(Nc):
    x, w, ids, V, G = make_inputs(7, 3, 3, 8, Nc, dtype=torch.float64, requires_grad=True)
    ids[0] = torch.tensor([4, 5, 6])  # make sure every kind is hit
    ids[1] = torch.tensor([6, 7, 1])

    def f(x, w, V, G):
        return sy.zero_compute_experts(x, w, ids, 4, 1, 1, V, G)

    assert torch.autograd.gradcheck(f, (x, w, V, G))
    assert torch.autograd.gradgradcheck(f, (x, w, V, G))


def test_gradient_reaches_only_the_constant_experts_that_are_used():
    x, w, ids, V, G = make_inputs(4, 3, 1, 8, 3, dtype=torch.float64, requires_grad=True)
    ids.fill_(5)  # constant expert 0 when first=3, Z=1, Cp=1
    sy.zero_compute_experts(x, w, ids, 3, 1, 1, V, G).sum().backward()
    assert V.grad[0].abs().sum() > 0 and G.grad[0].abs().sum() > 0
    assert V.grad[1:].abs().sum() == 0 and G.grad[1:].abs().sum() == 0


@pytest.mark.parametrize("Nc", [0, 2])
def test_opcheck(Nc):
    x, w, ids, V, G = make_inputs(9, 4, 2, 7, Nc, requires_grad=True)
    torch.library.opcheck(sy.zero_compute_experts.default, (x, w, ids, 3, 1, 2, V, G))
    torch.library.opcheck(sy.zero_compute_experts.default, (x, w, ids, 3, 1, 2, V, G), {"num_experts": 8})


def test_rejects_bad_arguments():
    x, w, ids, V, G = make_inputs(4, 3, 2, 6, 2)
    base = dict(x=x, topk_weights=w, topk_experts=ids, first_expert=2, num_zero=1, num_copy=1,
                const_vectors=V, const_gate_weight=G)
    cases = [
        (dict(x=x[0]), r"expected x to be a 2-D \[T, d\] tensor, got 1-D"),
        (dict(x=x.long()), r"expected x to be floating point, got Long"),
        (dict(topk_weights=w[0]), r"expected topk_weights to be a 2-D \[T, K\] tensor, got 1-D"),
        (dict(topk_weights=w.long()), r"expected topk_weights to be floating point, got Long"),
        (dict(topk_experts=ids.int()), r"expected topk_experts to be int64, got Int"),
        (dict(topk_experts=ids[:, :1]), r"expected topk_experts to have the shape of topk_weights \[4, 2\], got \[4, 1\]"),
        (dict(topk_weights=w[:3], topk_experts=ids[:3]), r"expected topk_weights to have one row per token of x \(T = 4\), got 3 rows"),
        (dict(first_expert=-1), r"expected first_expert >= 0, got -1"),
        (dict(num_zero=-2), r"expected num_zero >= 0, got -2"),
        (dict(num_copy=-1), r"expected num_copy >= 0, got -1"),
        (dict(const_vectors=V[:, :2]), r"expected const_vectors to be a 2-D \[Nc, d\] tensor with d = 3 .*got shape \[2, 2\]"),
        (dict(const_vectors=V[0]), r"expected const_vectors to be a 2-D \[Nc, d\] tensor"),
        (dict(const_gate_weight=G[:1]), r"expected const_gate_weight of shape \[Nc, 2, d\] = \[2, 2, 3\] .*got \[1, 2, 3\]"),
        (dict(const_gate_weight=G[:, :1]), r"expected .*got \[2, 1, 3\]"),
        (dict(const_gate_weight=G[0]), r"expected .*got \[2, 3\]"),
        (dict(const_vectors=V.double()), r"expected const_vectors and const_gate_weight to have x's dtype Float, got Double and Float"),
    ]
    for override, msg in cases:
        kwargs = {**base, **override}
        with pytest.raises(RuntimeError, match="zero_compute_experts: " + msg):
            sy.zero_compute_experts(*kwargs.values())


def test_num_experts_checks_the_id_range():
    x, w, ids, V, G = make_inputs(4, 3, 2, 6, 2)
    # zero 2, copy 3, constants 4 and 5: fits in 6, not in 5.
    sy.zero_compute_experts(x, w, ids, 2, 1, 1, V, G, num_experts=6)
    with pytest.raises(RuntimeError, match=r"zero-computation experts \[2, 6\) .* to fit in num_experts = 5"):
        sy.zero_compute_experts(x, w, ids.clamp(max=4), 2, 1, 1, V, G, num_experts=5)
    bad = ids.clone()
    bad[1, 1] = 6
    with pytest.raises(RuntimeError, match=r"zero_compute_experts: expected every value of topk_experts to be an expert id in \[0, 6\), got values in \[1, 6\]"):
        sy.zero_compute_experts(x, w, bad, 2, 1, 1, V, G, num_experts=6)
    # Without num_experts, ids outside the zero-computation range are simply other experts.
    out = sy.zero_compute_experts(x, w, bad, 2, 1, 1, V, G)
    torch.testing.assert_close(out.double(), ref_zero_compute(x, w, bad, 2, 1, 1, V, G), rtol=1e-5, atol=1e-6)


def test_wrapper_is_exported():
    assert "zero_compute_experts" in switchyard.ops.__all__
    assert switchyard.ops.zero_compute_experts.__doc__


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, w, ids, V, G = make_inputs(32, 8, 2, 8, 2)
    cpu = sy.zero_compute_experts(x, w, ids, 4, 1, 1, V, G, num_experts=8)
    gpu = sy.zero_compute_experts(*(t.cuda() for t in (x, w, ids)), 4, 1, 1, V.cuda(), G.cuda(), num_experts=8)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
