"""Load-balancing losses, the expert-bias update and the router helpers.

Every operator is compared with an independent float64 reference written here with
explicit loops (none of them calls the operator), checked with gradcheck and opcheck, and
fed bad arguments whose error messages are asserted.
"""

from __future__ import annotations

import math

import pytest
import torch

import switchyard
from switchyard import ops

sy = torch.ops.switchyard

# (T, E, K): one token, one expert, K == E, and general shapes.
SHAPES = [(1, 1, 1), (1, 4, 4), (5, 1, 1), (7, 5, 2), (16, 8, 8), (33, 16, 3)]
SCORE_FUNCS = ["softmax", "sigmoid"]


# ---- independent float64 references ------------------------------------------------------


def ref_scores(logits: torch.Tensor, score_func: str) -> torch.Tensor:
    """Normalised scores p [T, E] in float64, one token at a time."""
    x = logits.detach().double()
    p = torch.empty_like(x)
    for t in range(x.shape[0]):
        row = x[t]
        if score_func == "softmax":
            e = torch.exp(row - row.max())
        else:
            e = 1.0 / (1.0 + torch.exp(-row))
        p[t] = e / e.sum()
    return p


def ref_switch(logits, topk_experts, score_func="softmax", num_null=0) -> float:
    T, E = logits.shape
    K = topk_experts.shape[1]
    if T == 0:
        return 0.0
    p = ref_scores(logits, score_func)
    f = [float((topk_experts == e).sum()) / (T * K) for e in range(E)]
    P = [float(p[:, e].sum()) / T for e in range(E)]
    if num_null > 0:
        f_pool = sum(f[E - num_null :]) / num_null
        P_pool = sum(P[E - num_null :]) / num_null
        for e in range(E - num_null, E):
            f[e], P[e] = f_pool, P_pool
    return E * sum(f[e] * P[e] for e in range(E))


def ref_z(logits) -> float:
    x = logits.detach().double()
    if x.shape[0] == 0:
        return 0.0
    total = 0.0
    for t in range(x.shape[0]):
        m = float(x[t].max())
        lse = m + math.log(float(torch.exp(x[t] - m).sum()))
        total += lse * lse
    return total / x.shape[0]


def ref_sequence(logits, topk_experts, seq_len, score_func="softmax") -> float:
    T, E = logits.shape
    K = topk_experts.shape[1]
    if T == 0:
        return 0.0
    p = ref_scores(logits, score_func)
    losses = []
    for s in range(T // seq_len):
        rows = range(s * seq_len, (s + 1) * seq_len)
        loss = 0.0
        for i in range(E):
            count = sum(int((topk_experts[t] == i).sum()) for t in rows)
            f_i = E / (K * seq_len) * count
            P_i = sum(float(p[t, i]) for t in rows) / seq_len
            loss += f_i * P_i
        losses.append(loss)
    return sum(losses) / len(losses)


def ref_bias_update(bias, load, rate):
    out = bias.detach().double().clone()
    loads = [float(v) for v in load]
    mean = sum(loads) / len(loads)
    for e, l in enumerate(loads):
        out[e] += rate * (1.0 if mean > l else -1.0 if mean < l else 0.0)
    return out


# ---- helpers ------------------------------------------------------------------------------


def make_routing(T, E, K, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=g, dtype=torch.float64).to(dtype)
    # Distinct experts per token, as a top-k router picks them; skewed so counts differ.
    noise = torch.randn(T, E, generator=g, dtype=torch.float64) + torch.linspace(0, 1, E)
    topk_experts = noise.topk(K, dim=1).indices
    return logits, topk_experts


# ---- switch_aux_loss ------------------------------------------------------------------------


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize("T,E,K", SHAPES)
def test_switch_aux_loss_matches_reference(T, E, K, score_func):
    logits, ids = make_routing(T, E, K)
    out = sy.switch_aux_loss(logits, ids, score_func=score_func)
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_switch(logits, ids, score_func), rel=1e-5, abs=1e-6)
    wrapped = ops.switch_aux_loss(logits, ids, score_func=score_func)
    assert torch.equal(out, wrapped)


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize("T,E,K,N", [(1, 2, 1, 1), (9, 6, 2, 2), (20, 8, 3, 3), (12, 5, 5, 4)])
def test_switch_aux_loss_null_experts_match_reference(T, E, K, N, score_func):
    logits, ids = make_routing(T, E, K, dtype=torch.float64)
    out = sy.switch_aux_loss(logits, ids, score_func=score_func, num_null_experts=N)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(ref_switch(logits, ids, score_func, N), rel=1e-10)


def test_switch_aux_loss_null_pool_ignores_spread_among_nulls():
    # Moving selections between identical null experts changes nothing; moving them
    # between real experts does.
    E, N = 6, 3
    logits = torch.randn(8, E, dtype=torch.float64)
    ids = torch.tensor([[0, 3]] * 8)
    spread = torch.tensor([[0, 3 + t % 3] for t in range(8)])
    a = sy.switch_aux_loss(logits, ids, num_null_experts=N)
    b = sy.switch_aux_loss(logits, spread, num_null_experts=N)
    assert torch.allclose(a, b, rtol=1e-12)
    c = sy.switch_aux_loss(logits, ids, num_null_experts=0)
    d = sy.switch_aux_loss(logits, spread, num_null_experts=0)
    assert not torch.allclose(c, d)


def test_switch_aux_loss_is_one_when_uniform():
    E, K = 4, 2
    logits = torch.zeros(8, E)
    ids = torch.tensor([[t % E, (t + 1) % E] for t in range(8)])
    assert sy.switch_aux_loss(logits, ids).item() == pytest.approx(1.0)
    assert sy.switch_aux_loss(logits, ids, score_func="sigmoid").item() == pytest.approx(1.0)
    assert sy.switch_aux_loss(logits, ids, num_null_experts=2).item() == pytest.approx(1.0)


def test_switch_aux_loss_low_precision_logits_computed_in_float32():
    logits, ids = make_routing(64, 8, 2, dtype=torch.bfloat16)
    out = sy.switch_aux_loss(logits, ids)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_switch(logits, ids), rel=1e-5)


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize("N", [0, 2])
def test_switch_aux_loss_gradcheck(score_func, N):
    logits, ids = make_routing(6, 5, 2, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda l: sy.switch_aux_loss(l, ids, score_func=score_func, num_null_experts=N), (logits,)
    )


def test_switch_aux_loss_zero_tokens():
    logits = torch.zeros(0, 4, requires_grad=True)
    ids = torch.zeros(0, 2, dtype=torch.long)
    out = sy.switch_aux_loss(logits, ids)
    assert out.item() == 0.0 and not torch.isnan(out)
    out.backward()
    assert logits.grad.shape == (0, 4)


@pytest.mark.parametrize("kwargs", [{}, {"score_func": "sigmoid", "num_null_experts": 1}])
def test_switch_aux_loss_opcheck(kwargs):
    logits, ids = make_routing(10, 6, 2)
    logits.requires_grad_(True)
    torch.library.opcheck(sy.switch_aux_loss.default, (logits, ids), kwargs)


# ---- z_loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("T,E,K", SHAPES)
def test_z_loss_matches_reference(T, E, K):
    logits, _ = make_routing(T, E, K)
    logits = logits * 10  # large logits: a naive exp would overflow in float32 at 100s
    out = sy.z_loss(logits)
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_z(logits), rel=1e-5)
    assert torch.equal(ops.z_loss(logits), out)


def test_z_loss_low_precision_and_zero_tokens():
    logits = (torch.randn(32, 8, dtype=torch.float64) * 30).to(torch.float16)
    out = sy.z_loss(logits)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_z(logits), rel=1e-5)
    empty = torch.zeros(0, 8, requires_grad=True)
    z = sy.z_loss(empty)
    assert z.item() == 0.0
    z.backward()


def test_z_loss_gradcheck_and_opcheck():
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sy.z_loss, (logits,))
    torch.library.opcheck(sy.z_loss.default, (torch.randn(9, 4, requires_grad=True),))


# ---- sequence_aux_loss ----------------------------------------------------------------------


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize(
    "T,E,K,L", [(1, 1, 1, 1), (4, 4, 4, 2), (6, 5, 2, 6), (12, 8, 3, 4), (30, 6, 2, 5), (8, 3, 1, 1)]
)
def test_sequence_aux_loss_matches_reference(T, E, K, L, score_func):
    logits, ids = make_routing(T, E, K)
    out = sy.sequence_aux_loss(logits, ids, L, score_func=score_func)
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_sequence(logits, ids, L, score_func), rel=1e-5)
    assert torch.equal(ops.sequence_aux_loss(logits, ids, L, score_func=score_func), out)


def test_sequence_aux_loss_one_sequence_equals_switch_loss():
    # With a single sequence, f_i P_i summed is exactly the Switch loss.
    logits, ids = make_routing(16, 8, 2, dtype=torch.float64)
    seq = sy.sequence_aux_loss(logits, ids, 16)
    assert torch.allclose(seq, sy.switch_aux_loss(logits, ids), rtol=1e-12)


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
def test_sequence_aux_loss_gradcheck(score_func):
    logits, ids = make_routing(12, 5, 2, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda l: sy.sequence_aux_loss(l, ids, 4, score_func=score_func), (logits,)
    )


def test_sequence_aux_loss_zero_tokens_and_opcheck():
    empty = torch.zeros(0, 4)
    assert sy.sequence_aux_loss(empty, torch.zeros(0, 2, dtype=torch.long), 8).item() == 0.0
    logits, ids = make_routing(12, 6, 2)
    logits.requires_grad_(True)
    torch.library.opcheck(sy.sequence_aux_loss.default, (logits, ids, 4), {"score_func": "sigmoid"})


# ---- bad arguments to the losses ------------------------------------------------------------

LOSSES = {
    "switch_aux_loss": lambda l, i, **kw: sy.switch_aux_loss(l, i, **kw),
    "sequence_aux_loss": lambda l, i, **kw: sy.sequence_aux_loss(l, i, 1, **kw),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_reject_bad_arguments(name):
    op = LOSSES[name]
    logits, ids = make_routing(4, 4, 2)
    cases = [
        ((logits[0], ids), {}, r"expected logits to be a 2-D \[T, E\] tensor, got 1-D"),
        ((logits.long(), ids), {}, r"expected logits to be floating point, got Long"),
        ((logits[:, :0], ids[:, :0]), {}, r"expected logits to have at least one expert column, got shape \[4, 0\]"),
        ((logits, ids.int()), {}, r"expected topk_experts to be int64, got Int"),
        ((logits, ids[0]), {}, r"expected topk_experts to be a 2-D \[T, K\] tensor, got 1-D"),
        ((logits, ids[:3]), {}, r"expected topk_experts to have one row per token of logits \(T = 4\), got 3 rows"),
        ((logits, ids[:, :0]), {}, r"expected topk_experts to select at least one expert per token \(K >= 1\), got shape \[4, 0\]"),
        ((logits, ids), {"score_func": "relu"}, r"expected score_func to be \"softmax\" or \"sigmoid\", got \"relu\""),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises(RuntimeError, match=name + ": " + msg):
            op(*args, **kwargs)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_reject_expert_ids_out_of_range(name):
    op = LOSSES[name]
    logits, ids = make_routing(4, 4, 2)
    bad = ids.clone()
    bad[2, 1] = 4
    with pytest.raises(RuntimeError, match=r"topk_experts to be an expert id in \[0, 4\), got values in \[0, 4\]"):
        op(logits, bad)
    bad[2, 1] = -1
    with pytest.raises(RuntimeError, match=r"expert id in \[0, 4\), got values in \[-1, 3\]"):
        op(logits, bad)


def test_expert_ids_checked_without_reading_values_under_a_dispatch_mode():
    # Where values cannot be read on the host (CUDA, torch.compile's fake tensors, an active
    # dispatch mode) the range check is an asynchronous assert; on CPU it still fires.
    from torch.utils._python_dispatch import TorchDispatchMode

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    logits, ids = make_routing(4, 4, 2)
    bad = ids.clone()
    bad[0, 0] = 4
    with PassThrough():
        sy.switch_aux_loss(logits, ids)
        with pytest.raises(RuntimeError, match=r"switch_aux_loss: expected every value of topk_experts to be an expert id in \[0, 4\)$"):
            sy.switch_aux_loss(logits, bad)


def test_shared_experts_are_not_router_outputs():
    # Contract: the losses see only the routed (and null) router outputs. Shared experts
    # (DeepSeekMoE) are never routed, so an id past the router's E -- e.g. a shared expert
    # numbered after the routed ones -- is an error, not silently ignored or counted.
    E_routed, num_shared = 4, 2
    logits, ids = make_routing(6, E_routed, 2)
    assert sy.switch_aux_loss(logits, ids).item() == pytest.approx(ref_switch(logits, ids), rel=1e-5)
    with_shared = torch.cat([ids, torch.full((6, 1), E_routed + num_shared - 1)], dim=1)
    with pytest.raises(RuntimeError, match=r"expert id in \[0, 4\), got values in \[0, 5\]"):
        sy.switch_aux_loss(logits, with_shared)
    with pytest.raises(RuntimeError, match=r"expert id in \[0, 4\)"):
        sy.sequence_aux_loss(logits, with_shared, 3)


def test_switch_aux_loss_rejects_bad_num_null_experts():
    logits, ids = make_routing(4, 4, 2)
    for n in (-1, 4, 7):
        with pytest.raises(RuntimeError, match=rf"num_null_experts in \[0, E\) with E = 4 .*got {n}"):
            sy.switch_aux_loss(logits, ids, num_null_experts=n)


def test_sequence_aux_loss_rejects_bad_seq_len():
    logits, ids = make_routing(10, 4, 2)
    for L in (0, -3):
        with pytest.raises(RuntimeError, match=rf"expected seq_len > 0, got {L}"):
            sy.sequence_aux_loss(logits, ids, L)
    with pytest.raises(RuntimeError, match=r"T to be a multiple of seq_len, got T = 10 and seq_len = 4"):
        sy.sequence_aux_loss(logits, ids, 4)


def test_z_loss_rejects_bad_logits():
    with pytest.raises(RuntimeError, match=r"z_loss: expected logits to be a 2-D \[T, E\] tensor, got 3-D"):
        sy.z_loss(torch.zeros(2, 3, 4))
    with pytest.raises(RuntimeError, match=r"z_loss: expected logits to be floating point, got Int"):
        sy.z_loss(torch.zeros(2, 3, dtype=torch.int32))


# ---- update_expert_bias_ --------------------------------------------------------------------


@pytest.mark.parametrize("load_dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize("E", [1, 2, 7, 64])
def test_update_expert_bias_matches_reference(E, load_dtype):
    g = torch.Generator().manual_seed(E)
    bias = torch.randn(E, generator=g)
    load = torch.randint(0, 5, (E,), generator=g).to(load_dtype)
    expected = ref_bias_update(bias, load, 1e-3)
    ptr = bias.data_ptr()
    out = sy.update_expert_bias_(bias, load, 1e-3)
    assert out is None and bias.data_ptr() == ptr  # in place, returns nothing
    torch.testing.assert_close(bias.double(), expected, rtol=0, atol=1e-6)


def test_update_expert_bias_ties_keep_their_bias():
    bias = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    ops.update_expert_bias_(bias, torch.tensor([2, 2, 2, 2]), 0.1)  # all at the mean
    assert bias.tolist() == [0.5, 0.5, 0.5, 0.5]
    ops.update_expert_bias_(bias, torch.tensor([1, 2, 3, 2]), 0.1)  # mean 2
    assert bias.tolist() == pytest.approx([0.6, 0.5, 0.4, 0.5], abs=1e-15)
    ops.update_expert_bias_(bias, torch.zeros(4, dtype=torch.long), 0.1)  # no tokens
    assert bias.tolist() == pytest.approx([0.6, 0.5, 0.4, 0.5], abs=1e-15)
    # A large integer load, exact in float64: the expert at the mean keeps its bias.
    big = torch.tensor([2**40, 2**40 + 2, 2**40 + 1])
    b = torch.zeros(3)
    ops.update_expert_bias_(b, big, 1.0)
    assert b.tolist() == [1.0, -1.0, 0.0]


def test_update_expert_bias_wrapper_returns_bias_and_works_on_a_buffer():
    module = torch.nn.Module()
    module.register_buffer("bias", torch.zeros(3))
    assert ops.update_expert_bias_(module.bias, torch.tensor([0.0, 3.0, 6.0]), 0.5) is module.bias
    assert module.bias.tolist() == [0.5, 0.0, -0.5]


def test_update_expert_bias_rejects_bad_arguments():
    bias = torch.zeros(4)
    cases = [
        ((torch.zeros(2, 2), torch.zeros(4), 0.1), r"expected bias to be a 1-D \[E\] tensor, got 2-D"),
        ((torch.zeros(4, dtype=torch.long), torch.zeros(4), 0.1), r"expected bias to be floating point, got Long"),
        ((bias, torch.zeros(4, 1), 0.1), r"expected expert_load to be a 1-D \[E\] tensor, got 2-D"),
        ((bias, torch.zeros(5), 0.1), r"expected expert_load to have one entry per expert of bias \(E = 4\), got 5"),
        ((bias, torch.zeros(4, dtype=torch.bool), 0.1), r"expected expert_load to be an integer or floating tensor, got Bool"),
        ((bias, torch.zeros(4), -0.1), r"expected update_rate to be finite and >= 0, got -0.1"),
        ((bias, torch.zeros(4), float("nan")), r"expected update_rate to be finite and >= 0, got nan"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match="update_expert_bias_: " + msg):
            sy.update_expert_bias_(*args)
    assert bias.tolist() == [0.0] * 4


def test_update_expert_bias_opcheck():
    torch.library.opcheck(sy.update_expert_bias_.default, (torch.randn(8), torch.randint(0, 9, (8,)), 0.01))


# ---- router_jitter --------------------------------------------------------------------------


def test_router_jitter_is_seeded_uniform_multiplicative_noise():
    x = torch.randn(64, 16, dtype=torch.float64)
    torch.manual_seed(1234)
    a = sy.router_jitter(x, 0.1)
    torch.manual_seed(1234)
    b = ops.router_jitter(x, 0.1)
    assert torch.equal(a, b)  # default generator: reproducible with torch.manual_seed
    ratio = a / x
    assert ratio.min() >= 0.9 - 1e-12 and ratio.max() <= 1.1 + 1e-12
    assert ratio.std() > 0.03  # actually noisy: U(0.9, 1.1) has std 0.058
    # Same draw as uniform_ on the default generator.
    torch.manual_seed(1234)
    noise = torch.empty_like(x).uniform_(0.9, 1.1)
    assert torch.equal(a, x * noise)
    c = sy.router_jitter(x, 0.1)
    assert not torch.equal(a, c)


def test_router_jitter_eps_zero_returns_x_and_bad_eps_rejected():
    x = torch.randn(4, 3)
    assert sy.router_jitter(x, 0.0) is x
    for eps in (-0.1, 1.5, float("inf")):
        with pytest.raises(RuntimeError, match=r"router_jitter: expected eps in \[0, 1\], got"):
            sy.router_jitter(x, eps)
    with pytest.raises(RuntimeError, match=r"router_jitter: expected x to be floating point, got Long"):
        sy.router_jitter(torch.zeros(3, dtype=torch.long), 0.1)


def test_router_jitter_gradient_is_the_noise_and_opcheck():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    y = sy.router_jitter(x, 0.2)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y / x).detach())
    for eps in (0.0, 0.1):
        torch.library.opcheck(sy.router_jitter.default, (torch.randn(6, 3, requires_grad=True), eps))
    assert torch.Tag.nondeterministic_seeded in sy.router_jitter.default.tags


# ---- router_logits --------------------------------------------------------------------------


def ref_router_logits(x, w, prev=None, res=None):
    x, w = x.detach().double(), w.detach().double()
    out = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for t in range(x.shape[0]):
        for e in range(w.shape[0]):
            out[t, e] = (x[t] * w[e]).sum()
            if prev is not None:
                out[t, e] += (prev[t].detach().double() * res[e].detach().double()).sum()
    return out


@pytest.mark.parametrize("T,d,E,Ep", [(1, 1, 1, 1), (5, 8, 4, 4), (0, 3, 2, 2), (9, 6, 5, 3)])
def test_router_logits_matches_reference(T, d, E, Ep):
    x, w = torch.randn(T, d), torch.randn(E, d)
    prev, res = torch.randn(T, Ep), torch.randn(E, Ep)
    out = sy.router_logits(x, w)
    assert out.shape == (T, E) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_router_logits(x, w), rtol=1e-5, atol=1e-5)
    out = ops.router_logits(x, w, prev, res)
    torch.testing.assert_close(out.double(), ref_router_logits(x, w, prev, res), rtol=1e-5, atol=1e-5)


def test_router_logits_gradcheck_and_opcheck():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    res = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sy.router_logits(a, b), (x, w))
    assert torch.autograd.gradcheck(sy.router_logits, (x, w, prev, res))
    torch.library.opcheck(sy.router_logits.default, (x.float(), w.float()))
    torch.library.opcheck(sy.router_logits.default, (x.float(), w.float(), prev.float(), res.float()))


def test_router_logits_rejects_bad_arguments():
    x, w = torch.randn(4, 6), torch.randn(5, 6)
    prev, res = torch.randn(4, 3), torch.randn(5, 3)
    cases = [
        ((x[0], w), r"expected x to be a 2-D \[T, d\] tensor, got 1-D"),
        ((x.long(), w), r"expected x to be floating point, got Long"),
        ((x, w[:, :5]), r"expected weight to have x's hidden size d = 6 columns, got shape \[5, 5\]"),
        ((x, w.double()), r"expected weight to have x's dtype Float, got Double"),
        ((x, w, prev, None), r"expected prev_logits and residual_weight both given or both None .*got prev_logits given and residual_weight None"),
        ((x, w, None, res), r"expected .*got prev_logits None and residual_weight given"),
        ((x, w, prev[:3], res), r"expected prev_logits to have one row per token of x \(T = 4\), got shape \[3, 3\]"),
        ((x, w, prev, res[:, :2]), r"expected residual_weight of shape \[E, E_prev\] = \[5, 3\], got \[5, 2\]"),
        ((x, w, prev, res[:4]), r"expected residual_weight of shape \[E, E_prev\] = \[5, 3\], got \[4, 3\]"),
        ((x, w, prev.double(), res), r"expected prev_logits and residual_weight to have x's dtype Float, got Double and Float"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match="router_logits: " + msg):
            sy.router_logits(*args)


def test_all_wrappers_are_exported():
    from switchyard.ops import losses as losses_module, router as router_module

    assert sorted(losses_module.__all__) == ["sequence_aux_loss", "switch_aux_loss", "update_expert_bias_", "z_loss"]
    assert sorted(router_module.__all__) == ["router_jitter", "router_logits"]
    for name in [*losses_module.__all__, *router_module.__all__]:
        assert name in switchyard.ops.__all__ and callable(getattr(switchyard.ops, name)), name
        assert getattr(switchyard.ops, name).__doc__, name


@pytest.mark.gpu
def test_losses_router_and_bias_on_cuda_match_cpu():
    logits, ids = make_routing(64, 8, 2)
    dev = torch.device("cuda")
    for name, args, kwargs in [
        ("switch_aux_loss", (logits, ids), {"num_null_experts": 2}),
        ("switch_aux_loss", (logits, ids), {"score_func": "sigmoid"}),
        ("z_loss", (logits,), {}),
        ("sequence_aux_loss", (logits, ids, 16), {"score_func": "sigmoid"}),
    ]:
        op = getattr(sy, name)
        cpu = op(*args, **kwargs)
        gpu = op(*(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    bias, load = torch.zeros(8), torch.tensor([1, 2, 3, 4, 5, 6, 7, 4])
    b = bias.to(dev)
    sy.update_expert_bias_(b, load.to(dev), 0.1)
    sy.update_expert_bias_(bias, load, 0.1)
    assert torch.equal(b.cpu(), bias)
    x, w = torch.randn(16, 8, device=dev), torch.randn(4, 8, device=dev)
    torch.testing.assert_close(sy.router_logits(x, w).cpu(), sy.router_logits(x.cpu(), w.cpu()), rtol=1e-4, atol=1e-4)
    ratio = sy.router_jitter(x, 0.1) / x
    assert ratio.min() >= 0.9 - 1e-6 and ratio.max() <= 1.1 + 1e-6
