"""permute_tokens / unpermute_tokens / unpermute_tokens_backward.

Compared with references written here in plain PyTorch: a float64 one (index_add_ over the
valid slots), and an exact one that sums each token's slots in ascending slot order in the
accumulation dtype, round by round, which the operators must match bit for bit (that is
their documented summation order). Routings come from route_topk (with capacity drops and
null experts, so the tail is non-empty) and route_expert_choice. Then: NaN in the tail,
determinism across runs and thread counts, gradcheck, opcheck, edge shapes, bad arguments.
Reruns on CUDA (marked `gpu`) with a GPU.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

import switchyard  # noqa: F401  (loads torch.ops.switchyard)
from switchyard.ops import permute_tokens, route_expert_choice, route_topk, unpermute_tokens

sy = torch.ops.switchyard

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- routings ------------------------------------------------------------------------------------


def topk_routing(T, E, k, *, num_null=0, capacity_factor=0.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E + num_null, generator=g, dtype=torch.float64).to(device)
    return route_topk(
        logits, k, num_routed_experts=E if num_null else -1, capacity_factor=capacity_factor
    )


def expert_choice_routing(T, E, capacity_factor, k=1, *, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=g, dtype=torch.float64).to(device)
    return route_expert_choice(logits, capacity_factor, k)


def grouped(kind, T, seed=0, device="cpu"):
    """(token_index, expert_index, weights) of a routing of T tokens."""
    if kind == "topk":
        r = topk_routing(T, 6, 2, seed=seed, device=device)
    elif kind == "topk_dropped":
        r = topk_routing(T, 6, 3, num_null=2, capacity_factor=0.7, seed=seed, device=device)
        assert T == 0 or (r.expert_index < 0).any()  # a non-empty tail
    elif kind == "expert_choice":
        r = expert_choice_routing(T, 5, 1.3, 2, seed=seed, device=device)
        return r.token_index, r.expert_index, r.weights
    else:
        raise ValueError(kind)
    return r.token_index, r.expert_index, r.slot_weights


KINDS = ["topk", "topk_dropped", "expert_choice"]


# ---- references ----------------------------------------------------------------------------------


def ref_permute(x, ti, ei):
    x64, ti, ei = x.detach().cpu().double(), ti.cpu(), ei.cpu()
    rows = torch.zeros(ti.numel(), x.shape[1], dtype=torch.float64)
    for i in range(ti.numel()):
        if ei[i] >= 0:
            rows[i] = x64[ti[i]]
    return rows


def ref_unpermute(rows, ti, ei, w, T):
    """float64: y[t] = sum over the valid slots of token t of w[i] * rows[i]."""
    ti, ei = ti.cpu(), ei.cpu()
    valid = ei >= 0
    r = rows.detach().cpu().double()[valid]
    if w is not None:
        r = r * w.detach().cpu().double()[valid, None]
    return torch.zeros(T, rows.shape[1], dtype=torch.float64).index_add_(0, ti[valid], r)


def exact_unpermute(rows, ti, ei, w, T):
    """The documented rounding: each token sums w[i] * rows[i] over its slots in ascending
    i, every product and sum rounded to the accumulation dtype, from +0; the sum is rounded
    once to rows' dtype. Round j adds every token's j-th slot (distinct tokens per round)."""
    acc = acc_dtype(rows.dtype)
    r = rows.detach().cpu().to(acc)
    wv = torch.ones(ti.numel(), dtype=acc) if w is None else w.detach().cpu().to(acc)
    rounds, seen = defaultdict(list), defaultdict(int)
    for i in range(ti.numel()):
        if ei[i] >= 0:
            t = int(ti[i])
            rounds[seen[t]].append(i)
            seen[t] += 1
    y = torch.zeros(T, rows.shape[1], dtype=acc)
    for j in sorted(rounds):
        idx = torch.tensor(rounds[j], dtype=torch.long)
        tok = ti.cpu()[idx]
        y[tok] = y[tok] + wv[idx, None] * r[idx]
    return y.to(rows.dtype)


def ref_backward(grad_y, rows, ti, ei, w):
    """float64 grad_rows[i] = w[i] * grad_y[t], grad_weights[i] = <rows[i], grad_y[t]>."""
    ti, ei = ti.cpu(), ei.cpu()
    valid = (ei >= 0)[:, None]
    g = grad_y.detach().cpu().double()[ti.clamp(0, max(grad_y.shape[0] - 1, 0))] * valid
    wv = torch.ones(ti.numel(), dtype=torch.float64) if w is None else w.detach().cpu().double()
    r = torch.where(valid, rows.detach().cpu().double(), 0.0)
    return g * wv[:, None], (r * g).sum(1)


def exact_grad_rows(grad_y, ti, ei, w, dtype):
    """grad_rows rounded as documented: w * grad_y in the accumulation dtype, then to rows'."""
    acc = acc_dtype(dtype)
    ti, ei = ti.cpu(), ei.cpu()
    valid = (ei >= 0)[:, None]
    g = grad_y.detach().cpu().to(acc)[ti.clamp(0, max(grad_y.shape[0] - 1, 0))]
    wv = torch.ones(ti.numel(), dtype=acc) if w is None else w.detach().cpu().to(acc)
    return torch.where(valid, wv[:, None] * g, 0.0).to(dtype)


def assert_bitwise(got, expected):
    got, expected = got.cpu(), expected.cpu()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())
    keep = ~got.isnan()
    bits = {torch.float64: torch.int64, torch.float32: torch.int32}.get(got.dtype, torch.int16)
    assert torch.equal(got.view(bits)[keep], expected.view(bits)[keep])


TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}
GRAD_WEIGHTS_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12)}


# ---- forward parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(dtype, kind, device):
    T, d = 37, 24
    ti, ei, w = grouped(kind, T, device=device)
    w = w.float() if dtype != torch.float64 else w  # float32 weights for 16-bit rows
    x = torch.randn(T, d, dtype=torch.float64).to(dtype).to(device)

    rows = permute_tokens(x, ti, ei)
    assert rows.dtype == dtype and rows.shape == (ti.numel(), d)
    assert_bitwise(rows, ref_permute(x, ti, ei).to(dtype))  # a copy: exact

    for weights in (w, None):
        y = unpermute_tokens(rows, ti, ei, weights, T)
        assert y.dtype == dtype and y.shape == (T, d)
        torch.testing.assert_close(y.cpu().double(), ref_unpermute(rows, ti, ei, weights, T), **TOL[dtype])
        assert_bitwise(y, exact_unpermute(rows, ti, ei, weights, T))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(40))
def test_random_configurations(seed, device):
    rng = random.Random(seed)
    T = rng.choice([0, 1, 2, 7, 33, 100])
    d = rng.choice([1, 2, 3, 8, 13, 64, 130])
    dtype = rng.choice(DTYPES)
    if rng.random() < 0.5:
        E = rng.choice([1, 2, 5, 16])
        k = rng.randint(1, E)
        num_null = rng.choice([0, 0, 1, 3])
        r = topk_routing(T, E, min(k, E + num_null), num_null=num_null,
                         capacity_factor=rng.choice([0.0, 0.5, 1.0, 2.0]), seed=seed, device=device)
        ti, ei, w, num_tokens = r.token_index, r.expert_index, r.slot_weights, None
    else:
        r = expert_choice_routing(T, rng.choice([1, 3, 8]), rng.choice([0.3, 1.0, 4.0]), seed=seed, device=device)
        ti, ei, w, num_tokens = r.token_index, r.expert_index, r.weights, T
    x = (torch.randn(T, d, dtype=torch.float64) * 3).to(dtype).to(device)
    rows = permute_tokens(x, r)
    assert_bitwise(rows, ref_permute(x, ti, ei).to(dtype))
    y = unpermute_tokens(rows, r, weights=w, num_tokens=num_tokens)
    assert_bitwise(y, exact_unpermute(rows, ti, ei, w, T))
    torch.testing.assert_close(y.cpu().double(), ref_unpermute(rows, ti, ei, w, T), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_to_16_bit_matches_torch(dtype, device):
    # one slot per token: y = round(w * row), w float32 spanning subnormal to overflow
    g = torch.Generator().manual_seed(5)
    T, d = 64, 40
    rows = (torch.randn(T, d, generator=g) * 4).to(dtype)
    rows[0, :6] = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1.0]).to(dtype)
    w = torch.randn(T, generator=g) * torch.pow(2.0, torch.randint(-30, 20, (T,), generator=g).float())
    ti = torch.randperm(T, generator=g)
    ei = torch.zeros(T, dtype=torch.long)
    y = unpermute_tokens(rows.to(device), ti.to(device), ei.to(device), w.to(device), T)
    expected = torch.empty(T, d, dtype=dtype)
    expected[ti] = (0.0 + w[:, None] * rows.float()).to(dtype)  # the sum starts from +0
    assert_bitwise(y, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_negative_zero_sums_to_positive_zero(device):
    rows = torch.tensor([[-0.0, 1.0]], device=device)
    y = unpermute_tokens(rows, torch.tensor([0], device=device), torch.tensor([0], device=device), None, 1)
    assert y.cpu().view(torch.int32)[0, 0] == 0  # 0 + (-0) = +0, like index_add_ into zeros


# ---- the tail --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_the_tail_does_not_leak(dtype, device):
    T, d = 50, 16
    ti, ei, w = grouped("topk_dropped", T, device=device)
    tail = ei < 0
    rows = torch.randn(ti.numel(), d, device=device).to(dtype).requires_grad_()
    with torch.no_grad():
        rows[tail] = float("nan")
    w = w.clone().float().masked_fill(tail, float("nan")).requires_grad_()
    ti = ti.masked_fill(tail, 10**9)  # garbage token ids in the tail are never read either
    y = unpermute_tokens(rows, ti, ei, w, T)
    assert torch.isfinite(y).all()
    y.backward(torch.randn_like(y))
    assert torch.isfinite(rows.grad).all() and (rows.grad[tail] == 0).all()
    assert torch.isfinite(w.grad).all() and (w.grad[tail] == 0).all()
    # and the gather writes zeros there, whatever x holds
    x = torch.randn(T, d, device=device).to(dtype)
    assert (permute_tokens(x, ti, ei)[tail] == 0).all()


# ---- backward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_parity(dtype, kind, device):
    T, d = 29, 20
    ti, ei, w = grouped(kind, T, device=device)
    w = w.float() if dtype != torch.float64 else w
    rows = torch.randn(ti.numel(), d, dtype=torch.float64).to(dtype).to(device)
    grad_y = torch.randn(T, d, dtype=torch.float64).to(dtype).to(device)
    for weights in (w, None):
        for rows_grad, weights_grad in [(True, True), (True, False), (False, True)]:
            if weights is None and weights_grad:
                continue
            gr, gw = sy.unpermute_tokens_backward(grad_y, rows, ti, ei, weights, rows_grad, weights_grad)
            ref_gr, ref_gw = ref_backward(grad_y, rows, ti, ei, weights)
            if rows_grad:
                assert gr.dtype == dtype and gr.shape == rows.shape
                assert_bitwise(gr, exact_grad_rows(grad_y, ti, ei, weights, dtype))
                torch.testing.assert_close(gr.cpu().double(), ref_gr, **TOL[dtype])
            else:
                assert gr.numel() == 0
            if weights_grad:
                assert gw.dtype == weights.dtype and gw.shape == weights.shape
                tol = GRAD_WEIGHTS_TOL.get(dtype, dict(rtol=1e-4, atol=1e-4))
                torch.testing.assert_close(gw.cpu().double(), ref_gw, **tol)
            else:
                assert gw.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_matches_index_ops(device):
    T, d = 40, 12
    r = topk_routing(T, 5, 2, num_null=1, capacity_factor=0.8, device=device)
    x = torch.randn(T, d, dtype=torch.float64, device=device, requires_grad=True)
    w = r.slot_weights.detach().clone().requires_grad_()
    y = unpermute_tokens(permute_tokens(x, r), r, weights=w)
    g = torch.randn_like(y)
    y.backward(g)

    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    valid = r.expert_index >= 0
    tok = r.token_index[valid]
    y2 = torch.zeros_like(x2).index_add(0, tok, x2.index_select(0, tok) * w2[valid, None])
    y2.backward(g)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    T, d = 11, 5
    r = topk_routing(T, 4, 2, num_null=1, capacity_factor=0.7, seed=3, device=device)
    ti, ei = r.token_index, r.expert_index
    assert (ei < 0).any()
    x = torch.randn(T, d, dtype=torch.float64, device=device, requires_grad=True)
    rows = torch.randn(ti.numel(), d, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(ti.numel(), dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: permute_tokens(x, ti, ei), (x,))
    assert torch.autograd.gradcheck(lambda rows, w: unpermute_tokens(rows, ti, ei, w, T), (rows, w))
    assert torch.autograd.gradcheck(lambda rows: unpermute_tokens(rows, ti, ei, None, T), (rows,))
    assert torch.autograd.gradcheck(
        lambda x, w: unpermute_tokens(permute_tokens(x, ti, ei), ti, ei, w, T), (x, w)
    )
    # permute's backward is unpermute_tokens, itself differentiable: double backward works
    assert torch.autograd.gradgradcheck(lambda x: permute_tokens(x, ti, ei), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_only_for_what_requires_it(device):
    T, d = 9, 4
    ti, ei, w = grouped("topk_dropped", T, device=device)
    rows = torch.randn(ti.numel(), d, device=device, requires_grad=True)
    unpermute_tokens(rows, ti, ei, w.float(), T).sum().backward()  # weights without grad
    torch.testing.assert_close(rows.grad.cpu(), exact_grad_rows(torch.ones(T, d), ti, ei, w.float(), torch.float32))
    w = w.float().requires_grad_()
    unpermute_tokens(rows.detach(), ti, ei, w, T).sum().backward()  # rows without grad
    torch.testing.assert_close(w.grad.cpu().double(), ref_backward(torch.ones(T, d), rows, ti, ei, w)[1], rtol=1e-5, atol=1e-5)


# ---- determinism -----------------------------------------------------------------------------------


def run_all(dtype, device, num_threads=None):
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        T, d = 600, 96
        ti, ei, w = grouped("topk_dropped", T, seed=7, device=device)
        g = torch.Generator().manual_seed(8)
        x = torch.randn(T, d, generator=g).to(dtype).to(device).requires_grad_()
        w = w.float().requires_grad_()
        y = unpermute_tokens(permute_tokens(x, ti, ei) * 1.5, ti, ei, w, T)
        y.backward(torch.randn(T, d, generator=g).to(dtype).to(device))
        return [t.detach().cpu() for t in (y, x.grad, w.grad)]
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_across_runs_and_thread_counts(dtype):
    first = run_all(dtype, "cpu", 1)
    for got in (run_all(dtype, "cpu", 1), run_all(dtype, "cpu", 2), run_all(dtype, "cpu", 3)):
        for a, b in zip(first, got):
            assert_bitwise(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_on_cuda(dtype):
    first = run_all(dtype, "cuda")
    for a, b in zip(first, run_all(dtype, "cuda")):
        assert_bitwise(a, b)


# ---- shapes, strides, routings --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_edge_shapes(device):
    dev = dict(device=device)
    empty = torch.empty(0, dtype=torch.long, **dev)
    # S = 0
    assert permute_tokens(torch.randn(5, 3, **dev), empty, empty).shape == (0, 3)
    y = unpermute_tokens(torch.empty(0, 3, **dev), empty, empty, torch.empty(0, **dev), 5)
    assert y.shape == (5, 3) and (y == 0).all()
    gr, gw = sy.unpermute_tokens_backward(torch.randn(5, 3, **dev), torch.empty(0, 3, **dev), empty, empty,
                                          torch.empty(0, **dev), True, True)
    assert gr.shape == (0, 3) and gw.shape == (0,)
    # T = 0 (and S = 0)
    assert unpermute_tokens(torch.empty(0, 3, **dev), empty, empty, None, 0).shape == (0, 3)
    assert permute_tokens(torch.empty(0, 3, **dev), empty, empty).shape == (0, 3)
    # T = 0 with slots, all in the tail
    tail = torch.full((4,), -1, dtype=torch.long, **dev)
    rows = permute_tokens(torch.empty(0, 3, **dev), tail, tail)
    assert rows.shape == (4, 3) and (rows == 0).all()
    assert unpermute_tokens(rows, tail, tail, None, 0).shape == (0, 3)
    # d = 0
    ti = torch.tensor([1, 0, 1], **dev)
    ei = torch.tensor([0, 0, 1], **dev)
    assert permute_tokens(torch.empty(2, 0, **dev), ti, ei).shape == (3, 0)
    assert unpermute_tokens(torch.empty(3, 0, **dev), ti, ei, None, 2).shape == (2, 0)
    gr, gw = sy.unpermute_tokens_backward(torch.empty(2, 0, **dev), torch.empty(3, 0, **dev), ti, ei,
                                          torch.ones(3, **dev), True, True)
    assert gr.shape == (3, 0) and gw.tolist() == [0.0, 0.0, 0.0]
    # a token no slot points at gets a zero row
    y = unpermute_tokens(torch.ones(3, 2, **dev), ti, ei, None, 4)
    assert y.cpu().tolist() == [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, device):
    T, d = 21, 10
    ti, ei, w = grouped("topk_dropped", T, device=device)
    S = ti.numel()
    x = torch.randn(d, T, dtype=torch.float64).to(dtype).to(device).t()  # transposed
    ti2 = torch.stack([ti, ti], dim=1)[:, 0]  # stride 2
    ei2 = torch.stack([ei, ei], dim=1)[:, 1]
    rows = torch.randn(S, 2 * d, dtype=torch.float64).to(dtype).to(device)[:, ::2]
    w2 = torch.stack([w, w], dim=1).to(acc_dtype(dtype))[:, 0]
    grad_y = torch.randn(T, d, 3, dtype=torch.float64).to(dtype).to(device)[:, :, 1]
    assert not any(t.is_contiguous() for t in (x, ti2, ei2, rows, w2, grad_y))
    assert_bitwise(permute_tokens(x, ti2, ei2), ref_permute(x, ti, ei).to(dtype))
    assert_bitwise(unpermute_tokens(rows, ti2, ei2, w2, T), exact_unpermute(rows, ti, ei, w2, T))
    gr, gw = sy.unpermute_tokens_backward(grad_y, rows, ti2, ei2, w2, True, True)
    assert_bitwise(gr, exact_grad_rows(grad_y, ti, ei, w2, dtype))
    ref_gw = ref_backward(grad_y, rows, ti, ei, w2)[1]
    torch.testing.assert_close(gw.cpu().double(), ref_gw, **GRAD_WEIGHTS_TOL.get(dtype, dict(rtol=1e-4, atol=1e-4)))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_weight_dtypes(device):
    # float64 weights with float32 rows are read as float32; grad_weights come back float64
    T, d = 13, 6
    ti, ei, w = grouped("topk", T, device=device)
    rows = torch.randn(ti.numel(), d, device=device, requires_grad=True)
    w64 = w.double().requires_grad_()
    y = unpermute_tokens(rows, ti, ei, w64, T)
    assert y.dtype == torch.float32
    assert_bitwise(y, exact_unpermute(rows, ti, ei, w64.float(), T))
    y.sum().backward()
    assert w64.grad.dtype == torch.float64
    # bfloat16 weights with float32 rows
    y = unpermute_tokens(rows.detach(), ti, ei, w.bfloat16(), T)
    assert_bitwise(y, exact_unpermute(rows, ti, ei, w.bfloat16().float(), T))


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_reproduces_k_times_x(device):
    T, d, k = 30, 8, 3
    r = topk_routing(T, 7, k, device=device)
    x = torch.randn(T, d, device=device)
    y = unpermute_tokens(permute_tokens(x, r), r)
    torch.testing.assert_close(y, k * x)  # each token appears k times, weight 1
    # with the combine weights (renormalized softmax: sum to 1 per token) it reproduces x
    torch.testing.assert_close(unpermute_tokens(permute_tokens(x, r), r, weights=r.slot_weights), x)


def test_wrapper_argument_errors():
    r = topk_routing(4, 3, 1)
    with pytest.raises(TypeError, match="not both"):
        permute_tokens(torch.randn(4, 2), r, r.expert_index)
    with pytest.raises(TypeError, match="expert_index is required"):
        permute_tokens(torch.randn(4, 2), r.token_index)
    ec = expert_choice_routing(4, 2, 1.0)
    with pytest.raises(TypeError, match="num_tokens is required"):
        unpermute_tokens(torch.randn(ec.token_index.numel(), 2), ec)


# ---- opcheck, compile ---------------------------------------------------------------------------------


def test_opcheck():
    T, d = 10, 6
    ti, ei, w = grouped("topk_dropped", T)
    x = torch.randn(T, d, requires_grad=True)
    rows = torch.randn(ti.numel(), d, requires_grad=True)
    w = w.float().requires_grad_()
    torch.library.opcheck(sy.permute_tokens.default, (x, ti, ei))
    torch.library.opcheck(sy.unpermute_tokens.default, (rows, ti, ei, w, T))
    torch.library.opcheck(sy.unpermute_tokens.default, (rows, ti, ei, None, T))
    torch.library.opcheck(sy.unpermute_tokens.default, (rows.bfloat16(), ti, ei, w.detach(), T))
    g = torch.randn(T, d)
    for flags in [(True, True), (True, False), (False, True), (False, False)]:
        torch.library.opcheck(sy.unpermute_tokens_backward.default, (g, rows.detach(), ti, ei, w.detach(), *flags))


def test_torch_compile_dynamic():
    def f(x, w):
        r = route_topk(x, 2)
        rows = permute_tokens(x, r)
        return unpermute_tokens(rows * 2, r, weights=w[: rows.shape[0]] * r.slot_weights).sum()

    compiled = torch.compile(f, dynamic=True, backend="aot_eager", fullgraph=True)
    for T in (8, 13):
        x = torch.randn(T, 6)
        w = torch.rand(2 * T)
        torch.testing.assert_close(compiled(x, w), f(x, w))


# ---- bad arguments ------------------------------------------------------------------------------------


def I(*v):  # noqa: E743
    return torch.tensor(v, dtype=torch.long)


X = torch.randn(4, 3)
ROWS = torch.randn(3, 3)
BAD = [
    (sy.permute_tokens, (torch.randn(4), I(0), I(0)), r"permute_tokens: x must be a 2-D tensor \[num_tokens, hidden\], got shape \[4\]"),
    (sy.permute_tokens, (torch.ones(4, 3, dtype=torch.int32), I(0), I(0)), r"permute_tokens: x must be float32, float64, bfloat16 or float16, got Int"),
    (sy.permute_tokens, (X, I(0, 1).int(), I(0, 0)), r"permute_tokens: token_index must be a 1-D int64 tensor \[num_slots\], got a Int tensor of shape \[2\]"),
    (sy.permute_tokens, (X, I(0, 1), I(0, 0)[None]), r"permute_tokens: expert_index must be a 1-D int64 tensor \[num_slots\], got a Long tensor of shape \[1, 2\]"),
    (sy.permute_tokens, (X, I(0, 1), I(0, 0, 0)), r"permute_tokens: token_index and expert_index must have the same length \(num_slots\), got shapes \[2\] and \[3\]"),
    (sy.permute_tokens, (X, I(0, 4), I(0, 1)), r"permute_tokens: token_index\[1\] = 4 is outside \[0, num_tokens\) with num_tokens = 4 \(the slot is valid: expert_index\[1\] = 1\)"),
    (sy.permute_tokens, (X, I(0, 1, -2), I(0, 1, 0)), r"permute_tokens: token_index\[2\] = -2 is outside \[0, num_tokens\)"),
    (sy.permute_tokens, (X, I(0), torch.zeros(1, dtype=torch.long, device="meta")), r"permute_tokens: expert_index must be on the same device as x \(cpu\), got one on meta"),
    (sy.unpermute_tokens, (torch.randn(3), I(0, 1, 2), I(0, 0, 0), None, 4), r"unpermute_tokens: rows must be a 2-D tensor \[num_slots, hidden\] with num_slots = 3 \(the length of token_index\), got shape \[3\]"),
    (sy.unpermute_tokens, (torch.randn(2, 3), I(0, 1, 2), I(0, 0, 0), None, 4), r"rows must be a 2-D tensor \[num_slots, hidden\] with num_slots = 3 \(the length of token_index\), got shape \[2, 3\]"),
    (sy.unpermute_tokens, (ROWS.long(), I(0, 1, 2), I(0, 0, 0), None, 4), r"unpermute_tokens: rows must be float32, float64, bfloat16 or float16, got Long"),
    (sy.unpermute_tokens, (ROWS, I(0, 1, 2), I(0, 0, 0), torch.ones(2), 4), r"unpermute_tokens: weights must be a 1-D floating tensor \[num_slots\] = \[3\], got a Float tensor of shape \[2\]"),
    (sy.unpermute_tokens, (ROWS, I(0, 1, 2), I(0, 0, 0), I(1, 1, 1), 4), r"weights must be a 1-D floating tensor \[num_slots\] = \[3\], got a Long tensor of shape \[3\]"),
    (sy.unpermute_tokens, (ROWS, I(0, 1, 2), I(0, 0, 0), None, -1), r"unpermute_tokens: num_tokens must be >= 0, got -1"),
    (sy.unpermute_tokens, (ROWS, I(0, 1, 2), I(0, -1, 0), None, 2), r"unpermute_tokens: token_index\[2\] = 2 is outside \[0, num_tokens\) with num_tokens = 2 \(the slot is valid: expert_index\[2\] = 0\)"),
    (sy.unpermute_tokens, (ROWS, I(0, 1, 2), I(0, 0, 0), torch.ones(3, device="meta"), 4), r"unpermute_tokens: weights must be on the same device as rows \(cpu\), got one on meta"),
    (sy.unpermute_tokens_backward, (torch.randn(4, 2), ROWS, I(0, 1, 2), I(0, 0, 0), None, True, False), r"unpermute_tokens_backward: grad_y must be a 2-D tensor \[num_tokens, hidden\] with hidden = 3 \(the columns of rows\), got shape \[4, 2\]"),
    (sy.unpermute_tokens_backward, (torch.randn(4, 3), ROWS, I(0, 1, 2), I(0, 0, 0), None, True, True), r"unpermute_tokens_backward: weights_grad=True needs weights, got None"),
    (sy.unpermute_tokens_backward, (torch.randn(2, 3), ROWS, I(0, 1, 2), I(0, 0, 0), torch.ones(3), True, True), r"unpermute_tokens_backward: token_index\[2\] = 2 is outside \[0, num_tokens\) with num_tokens = 2"),
    (sy.unpermute_tokens_backward, (torch.randn(2, 3), ROWS, I(0, 5, 1), I(0, 0, 0), None, True, False), r"unpermute_tokens_backward: token_index\[1\] = 5 is outside"),
]


@pytest.mark.parametrize("op,args,message", BAD)
def test_bad_arguments(op, args, message):
    with pytest.raises(RuntimeError, match=message):
        op(*args)


def test_bad_arguments_on_meta():
    m = dict(device="meta")
    with pytest.raises(RuntimeError, match=r"permute_tokens: x must be a 2-D tensor"):
        sy.permute_tokens(torch.empty(4, **m), torch.empty(1, dtype=torch.long, **m), torch.empty(1, dtype=torch.long, **m))
    with pytest.raises(RuntimeError, match=r"unpermute_tokens: rows must be a 2-D tensor \[num_slots, hidden\] with num_slots = 2"):
        sy.unpermute_tokens(torch.empty(3, 4, **m), torch.empty(2, dtype=torch.long, **m), torch.empty(2, dtype=torch.long, **m), None, 5)


@pytest.mark.gpu
def test_indices_on_another_device():
    with pytest.raises(RuntimeError, match=r"permute_tokens: token_index must be on the same device as x \(cuda:0\), got one on cpu"):
        permute_tokens(torch.randn(4, 3, device="cuda"), I(0), I(0))


# ---- CUDA vs CPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 3, 8, 64, 520, 4096])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_matches_cpu(dtype, d, offset):
    # offset 1 misaligns every row start: the element-wise (unpacked) kernels run
    T = 300
    ti, ei, w = grouped("topk_dropped", T, seed=11)
    S = ti.numel()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(T * d + offset, generator=g).to(dtype)[offset:].view(T, d)
    rows = torch.randn(S * d + offset, generator=g).to(dtype)[offset:].view(S, d)
    grad_y = torch.randn(T * d + offset, generator=g).to(dtype)[offset:].view(T, d)
    w = w.float()
    cpu = [
        sy.permute_tokens(x, ti, ei),
        sy.unpermute_tokens(rows, ti, ei, w, T),
        *sy.unpermute_tokens_backward(grad_y, rows, ti, ei, w, True, True),
    ]
    c = lambda t: t.cuda()  # noqa: E731
    gpu = [
        sy.permute_tokens(c(x), c(ti), c(ei)),
        sy.unpermute_tokens(c(rows), c(ti), c(ei), c(w), T),
        *sy.unpermute_tokens_backward(c(grad_y), c(rows), c(ti), c(ei), c(w), True, True),
    ]
    # copies, sums in one order, and products round identically (Note [One rounding for
    # CPU and GPU]); the dot products for grad_weights sum in another order
    for a, b in zip(cpu[:3], gpu[:3]):
        assert_bitwise(b, a)
    torch.testing.assert_close(gpu[3].cpu(), cpu[3], rtol=1e-5, atol=1e-5 * d**0.5)
