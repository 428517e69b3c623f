"""route_topk: top-k routing and its variants (bias, groups, local experts, capacity).

Every output is compared with an independent float64 reference written here in plain
PyTorch (it never calls the operator or its helpers), on many seeded random shapes and on
hand-made edge cases; then gradcheck, opcheck and bad arguments. The parity suite reruns
on CUDA (marked `gpu`) when a GPU is visible.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import switchyard  # noqa: F401  (loads torch.ops.switchyard)
from switchyard.ops import Routing, route_topk

sy = torch.ops.switchyard

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


# ---- the independent reference ---------------------------------------------------------------


def reference_route_topk(
    logits,
    k,
    *,
    score_func="softmax",
    renormalize=True,
    scaling_factor=1.0,
    selection_bias=None,
    num_groups=1,
    topk_groups=0,
    group_score="max",
    num_routed_experts=-1,
    capacity_factor=0.0,
    drop_policy="position",
):
    """What docs/routing.md specifies, in float64, one rule at a time."""
    x = logits.detach().to("cpu", torch.float64)
    T, E = x.shape
    Er = E if num_routed_experts == -1 else num_routed_experts
    scores = torch.softmax(x, dim=-1) if score_func == "softmax" else torch.sigmoid(x)
    keys = scores.clone()
    if selection_bias is not None:
        keys = keys + selection_bias.detach().to("cpu", torch.float64)

    # 1. selection: best key first, ties to the lower expert (a stable sort of -key)
    G = num_groups
    tg = G if topk_groups == 0 else topk_groups
    if G > 1 and group_score == "balanced":
        size, per_group = Er // G, k // G
        picked = []
        for g in range(G):
            order = torch.argsort(-keys[:, g * size : (g + 1) * size], dim=-1, stable=True)
            picked.append(order[:, :per_group] + g * size)
        picked = torch.sort(torch.cat(picked, dim=-1), dim=-1).values  # ascending index
        best = torch.argsort(-keys.gather(1, picked), dim=-1, stable=True)
        experts = picked.gather(1, best)
    elif G > 1 and tg < G:
        size = Er // G
        grouped = keys[:, :Er].reshape(T, G, size)
        if group_score == "max":
            group_scores = grouped.max(dim=-1).values
        else:
            group_scores = grouped.sort(dim=-1, descending=True).values[..., :2].sum(dim=-1)
        kept_groups = torch.argsort(-group_scores, dim=-1, stable=True)[:, :tg]
        allowed = torch.zeros(T, E, dtype=torch.bool)
        allowed[:, Er:] = True
        for t in range(T):
            for g in kept_groups[t].tolist():
                allowed[t, g * size : (g + 1) * size] = True
        masked = torch.where(allowed, keys, torch.full_like(keys, -math.inf))
        experts = torch.argsort(-masked, dim=-1, stable=True)[:, :k]
    else:
        experts = torch.argsort(-keys, dim=-1, stable=True)[:, :k]

    # 2. weights: the scores (not the keys), renormalized over the selection, scaled
    weights = scores.gather(1, experts)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * scaling_factor

    # 3. capacity: per routed expert, keep the first C slots (position) or the C heaviest
    flat_e, flat_w = experts.flatten().tolist(), weights.flatten().tolist()
    S = T * k
    load = [0] * E
    for e in flat_e:
        load[e] += 1
    dropped = set()
    if capacity_factor > 0:
        C = math.ceil(capacity_factor * T * k / Er)
        for e in range(Er):
            slots = [s for s in range(S) if flat_e[s] == e]
            if drop_policy == "score":
                slots = sorted(slots, key=lambda s: (-flat_w[s], s))
            dropped.update(slots[C:])
    for s in dropped:
        flat_w[s] = 0.0

    # 4. grouping: kept routed slots by (expert, token), then the tail in slot order
    kept = sorted((s for s in range(S) if flat_e[s] < Er and s not in dropped), key=lambda s: (flat_e[s], s))
    tail = [s for s in range(S) if flat_e[s] >= Er or s in dropped]
    order = kept + tail
    counts = [sum(1 for s in kept if flat_e[s] == e) for e in range(Er)]
    return {
        "topk_weights": torch.tensor(flat_w, dtype=torch.float64).reshape(T, k),
        "topk_experts": experts,
        "token_index": torch.tensor([s // k for s in order], dtype=torch.long),
        "expert_index": torch.tensor([flat_e[s] for s in kept] + [-1] * len(tail), dtype=torch.long),
        "slot_index": torch.tensor(order, dtype=torch.long),
        "slot_weights": torch.tensor([flat_w[s] for s in kept] + [0.0] * len(tail), dtype=torch.float64),
        "expert_counts": torch.tensor(counts, dtype=torch.long),
        "expert_load": torch.tensor(load, dtype=torch.long),
        "num_dropped": torch.tensor(len(dropped), dtype=torch.long),
    }


def assert_matches(got: Routing, ref: dict, logits: torch.Tensor, exact_weights=False):
    T, E = logits.shape
    k = ref["topk_experts"].shape[1]
    wdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert got.topk_weights.dtype == wdtype and got.slot_weights.dtype == wdtype
    for name in ("topk_experts", "token_index", "expert_index", "slot_index", "expert_counts", "expert_load"):
        assert getattr(got, name).dtype == torch.long, name
    assert got.topk_weights.shape == (T, k) and got.slot_index.shape == (T * k,)
    assert got.num_dropped.shape == ()
    for name in ("topk_experts", "token_index", "expert_index", "slot_index", "expert_counts", "expert_load", "num_dropped"):
        torch.testing.assert_close(getattr(got, name).cpu(), ref[name], rtol=0, atol=0, msg=name)
    tol = dict(rtol=0, atol=0) if exact_weights else dict(rtol=2e-6, atol=2e-7)
    if wdtype == torch.float64 and not exact_weights:
        tol = dict(rtol=1e-12, atol=1e-14)
    for name in ("topk_weights", "slot_weights"):
        torch.testing.assert_close(getattr(got, name).cpu().double(), ref[name], msg=name, **tol)


def check(logits, k, **kwargs):
    got = route_topk(logits, k, **kwargs)
    assert_matches(got, reference_route_topk(logits, k, **kwargs), logits)
    return got


# ---- random configurations -------------------------------------------------------------------


def random_case(rng: random.Random, device: str):
    """A random (logits, k, kwargs) drawn over every option."""
    T = rng.choice([0, 1, 2, 5, 17, 64, 130])
    E = rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 70])
    kwargs = {}
    Er = E
    if E > 1 and rng.random() < 0.3:
        Er = rng.randint(1, E - 1)
        kwargs["num_routed_experts"] = Er
    k = rng.randint(1, min(E, 8) if rng.random() < 0.8 else E)
    kwargs["score_func"] = rng.choice(["softmax", "sigmoid"])
    kwargs["renormalize"] = rng.random() < 0.6
    if rng.random() < 0.3:
        kwargs["scaling_factor"] = rng.choice([2.5, 0.5])
    if rng.random() < 0.3:
        kwargs["selection_bias"] = torch.randn(E, dtype=torch.float64) * 0.3
    # groups: only where the divisibility rules allow them
    divisors = [g for g in range(2, Er + 1) if Er % g == 0]
    if divisors and rng.random() < 0.4:
        G = rng.choice(divisors)
        group_score = rng.choice(["max", "top2_sum", "balanced"])
        if group_score == "balanced" and (k % G == 0 and Er == E):
            kwargs.update(num_groups=G, group_score="balanced")
        elif group_score != "balanced" and not (group_score == "top2_sum" and Er // G < 2):
            tg = rng.randint(1, G)
            if tg * (Er // G) + (E - Er) >= k:
                kwargs.update(num_groups=G, topk_groups=tg, group_score=group_score)
    if rng.random() < 0.4:
        kwargs["capacity_factor"] = rng.choice([0.5, 1.0, 1.25, 2.0])
        kwargs["drop_policy"] = rng.choice(["position", "score"])
    dtype = rng.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16])
    logits = (torch.randn(T, E, dtype=torch.float64) * rng.choice([0.5, 2.0])).to(dtype)
    if "selection_bias" in kwargs:
        kwargs["selection_bias"] = kwargs["selection_bias"].to(device)
    return logits.to(device), k, kwargs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(300))
def test_random_configurations(seed, device):
    rng = random.Random(seed)
    logits, k, kwargs = random_case(rng, device)
    check(logits, k, **kwargs)


# ---- named edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_dtypes_and_score_funcs(dtype, score_func, renormalize, device):
    torch.manual_seed(0)
    logits = torch.randn(257, 24, dtype=dtype, device=device)
    check(logits, 3, score_func=score_func, renormalize=renormalize, scaling_factor=1.5)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_tokens(device):
    logits = torch.empty(0, 8, device=device)
    got = check(logits, 2)
    assert got.token_index.numel() == 0 and int(got.num_dropped) == 0
    check(logits, 2, capacity_factor=1.0, num_routed_experts=6)


@pytest.mark.parametrize("device", DEVICES)
def test_one_token_and_one_expert(device):
    check(torch.randn(1, 5, device=device), 2)
    got = check(torch.randn(9, 1, device=device), 1)
    assert torch.all(got.topk_weights == 1) and torch.all(got.topk_experts == 0)
    check(torch.randn(9, 1, device=device), 1, score_func="sigmoid", renormalize=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("E", [2, 8, 16, 64])
def test_k_equals_num_experts(E, device):
    torch.manual_seed(E)
    for score_func in ("softmax", "sigmoid"):
        check(torch.randn(40, E, device=device), E, score_func=score_func)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("E,k", [(8, 1), (8, 2), (16, 4), (64, 8), (128, 8), (96, 40)])
def test_exact_ties_go_to_the_lower_expert(E, k, device):
    # integer logits in a small range: many exact ties in every row
    torch.manual_seed(k)
    logits = torch.randint(-2, 3, (100, E)).float().to(device)
    got = check(logits, k)
    check(logits, k, score_func="sigmoid", renormalize=False)
    # all-equal rows (a router initialised at zero): the first k experts, in order
    zeros = torch.zeros(5, E, device=device)
    got = check(zeros, k)
    assert torch.equal(got.topk_experts.cpu(), torch.arange(k).expand(5, k))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_with_integer_bias(device):
    torch.manual_seed(1)
    logits = torch.randint(-2, 3, (64, 32)).double().to(device)
    bias = torch.randint(-1, 2, (32,)).double().to(device)
    for score_func in ("softmax", "sigmoid"):
        check(logits, 4, score_func=score_func, selection_bias=bias)
        check(logits.float(), 4, score_func=score_func, selection_bias=bias.float())


@pytest.mark.parametrize("device", DEVICES)
def test_bias_changes_choice_not_weights(device):
    torch.manual_seed(2)
    logits = torch.randn(50, 16, device=device)
    bias = torch.zeros(16, device=device)
    bias[5] = 10.0  # expert 5 always wins the selection
    for score_func in ("softmax", "sigmoid"):
        got = check(logits, 2, score_func=score_func, selection_bias=bias, renormalize=False)
        assert torch.all(got.topk_experts[:, 0] == 5)
        scores = torch.softmax(logits, -1) if score_func == "softmax" else torch.sigmoid(logits)
        torch.testing.assert_close(got.topk_weights[:, 0], scores[:, 5])


@pytest.mark.parametrize("device", DEVICES)
def test_all_tokens_prefer_one_expert(device):
    torch.manual_seed(3)
    logits = torch.randn(200, 8, device=device)
    logits[:, 3] += 6.0  # (not more: float32 weights would round to exactly 1 and tie)
    got = check(logits, 2)
    assert int(got.expert_counts[3]) == 200 and int(got.expert_load[3]) == 200
    for policy in ("position", "score"):
        got = check(logits, 2, capacity_factor=1.0, drop_policy=policy)
        assert int(got.expert_counts[3]) == 50 and int(got.num_dropped) == 150


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_logits(device):
    torch.manual_seed(4)
    base = torch.randn(32, 300, device=device)
    check(base.t(), 3)  # [300, 32] transposed view
    check(base[:, ::3], 2, capacity_factor=1.0)  # strided columns
    check(base.t()[::2], 4, score_func="sigmoid", selection_bias=torch.randn(32, device=device))
    assert not base.t().is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group_score", ["max", "top2_sum"])
@pytest.mark.parametrize("topk_groups", [1, 2, 3, 4])
def test_group_limited(group_score, topk_groups, device):
    torch.manual_seed(topk_groups)
    logits = torch.randn(90, 32, device=device)
    got = check(logits, 4, num_groups=4, topk_groups=topk_groups, group_score=group_score)
    groups_used = (got.topk_experts // 8).cpu()
    for row in groups_used.tolist():
        assert len(set(row)) <= topk_groups
    # DeepSeek-V3 style: sigmoid, bias, top2_sum, scaling
    bias = torch.randn(32, device=device) * 0.1
    check(logits, 4, score_func="sigmoid", selection_bias=bias, num_groups=8, topk_groups=topk_groups,
          group_score=group_score, scaling_factor=2.5)


@pytest.mark.parametrize("device", DEVICES)
def test_group_ties(device):
    torch.manual_seed(5)
    logits = torch.randint(-1, 2, (60, 16)).float().to(device)
    for group_score in ("max", "top2_sum"):
        check(logits, 2, num_groups=4, topk_groups=2, group_score=group_score)
        check(logits, 2, num_groups=4, topk_groups=1, group_score=group_score, score_func="sigmoid")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("G,k", [(2, 2), (4, 4), (4, 8), (8, 8)])
def test_balanced_groups(G, k, device):
    torch.manual_seed(G * k)
    logits = torch.randn(70, 32, device=device)
    got = check(logits, k, num_groups=G, group_score="balanced")
    per_group = torch.stack([(got.topk_experts // (32 // G) == g).sum(-1) for g in range(G)], -1)
    assert torch.all(per_group == k // G)
    check(torch.randint(-1, 2, (30, 32)).float().to(device), k, num_groups=G, group_score="balanced")


@pytest.mark.parametrize("device", DEVICES)
def test_local_experts(device):
    # 6 routed experts + 2 local (null / zero-computation) experts
    torch.manual_seed(6)
    logits = torch.randn(80, 8, device=device)
    logits[:, 6:] += 1.0
    got = check(logits, 2, num_routed_experts=6)
    assert got.expert_counts.shape == (6,) and got.expert_load.shape == (8,)
    n_local = int((got.topk_experts >= 6).sum())
    assert n_local > 0
    assert torch.all(got.expert_index[-n_local:] == -1)
    assert torch.all(got.slot_weights[-n_local:] == 0)
    # local experts are never capacity-limited and stay outside the groups
    check(logits, 2, num_routed_experts=6, capacity_factor=0.5)
    check(logits, 3, num_routed_experts=6, num_groups=3, topk_groups=1)
    check(logits, 2, num_routed_experts=6, num_groups=2, topk_groups=1, group_score="top2_sum",
          capacity_factor=1.0, drop_policy="score")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", ["position", "score"])
@pytest.mark.parametrize("capacity_factor", [0.25, 0.5, 1.0, 1.1, 3.0])
def test_capacity(policy, capacity_factor, device):
    torch.manual_seed(7)
    logits = torch.randn(123, 8, device=device)
    logits[:, :2] += 1.0  # overload experts 0 and 1
    got = check(logits, 2, capacity_factor=capacity_factor, drop_policy=policy)
    C = math.ceil(capacity_factor * 123 * 2 / 8)
    assert int(got.expert_counts.max()) <= C
    assert int(got.num_dropped) == int((got.expert_load - got.expert_counts).sum())
    dropped = got.slot_index[int(got.expert_counts.sum()):]
    assert torch.all(got.topk_weights.flatten()[dropped] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_score_ties(device):
    # duplicated rows: equal weights across tokens; ties go to the lower token
    rows = torch.randint(-2, 3, (4, 8)).float()
    logits = rows.repeat(25, 1).to(device)
    for policy in ("position", "score"):
        check(logits, 2, capacity_factor=0.5, drop_policy=policy)
        check(logits, 2, capacity_factor=0.5, drop_policy=policy, score_func="sigmoid")


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_renormalizes_before_dropping(device):
    torch.manual_seed(8)
    logits = torch.randn(40, 4, device=device)
    logits[:, 0] += 5
    full = route_topk(logits, 2)
    capped = route_topk(logits, 2, capacity_factor=0.5)
    kept = capped.topk_weights != 0
    torch.testing.assert_close(capped.topk_weights[kept], full.topk_weights[kept])
    assert int(capped.num_dropped) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_grouping_layout(device):
    torch.manual_seed(9)
    logits = torch.randn(50, 6, device=device)
    got = route_topk(logits, 3, num_routed_experts=5, capacity_factor=0.8)
    n_kept = int(got.expert_counts.sum())
    e, t, s = got.expert_index.cpu(), got.token_index.cpu(), got.slot_index.cpu()
    keys = e[:n_kept] * 1000 + t[:n_kept]
    assert torch.all(keys[1:] > keys[:-1])  # (expert, token) ascending
    assert torch.all(s[n_kept:][1:] > s[n_kept:][:-1])  # tail in slot order
    assert torch.equal(torch.sort(s).values, torch.arange(150))  # a permutation
    assert torch.equal(t, s // 3)
    assert torch.equal(got.topk_experts.flatten().cpu()[s[:n_kept]], e[:n_kept])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_masked_experts_with_infinite_logits(score_func, device):
    torch.manual_seed(14)
    logits = torch.randn(40, 80, device=device)
    logits[:, 10:] = -math.inf  # only 10 experts available
    logits[::3, :5] = -math.inf
    got = check(logits, 8, score_func=score_func)
    check(logits, 8, score_func=score_func, renormalize=False)
    assert torch.all(got.topk_weights.isfinite())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("E,k", [(8, 2), (64, 8), (200, 4)])
def test_nan_logits_keep_the_layout_valid(E, k, device):
    # which experts a NaN row picks is unspecified; the outputs must stay well formed
    logits = torch.randn(30, E, device=device)
    logits[3, 0] = float("nan")
    logits[4] = float("nan")
    logits[5, ::2] = float("nan")
    r = route_topk(logits, k, capacity_factor=1.0)
    assert torch.equal(torch.sort(r.slot_index.cpu()).values, torch.arange(30 * k))
    assert torch.all((r.topk_experts >= 0) & (r.topk_experts < E))
    assert all(len(set(row)) == k for row in r.topk_experts.tolist())
    assert int(r.expert_load.sum()) == 30 * k


def test_deterministic():
    logits = torch.randn(1000, 64)
    a = route_topk(logits, 8, capacity_factor=1.0, drop_policy="score")
    for _ in range(3):
        b = route_topk(logits, 8, capacity_factor=1.0, drop_policy="score")
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_thread_counts_agree():
    torch.manual_seed(10)
    logits = torch.randn(3000, 64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = route_topk(logits, 4, capacity_factor=1.0, num_routed_experts=60)
        torch.set_num_threads(max(2, old))
        b = route_topk(logits, 4, capacity_factor=1.0, num_routed_experts=60)
    finally:
        torch.set_num_threads(old)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ---- autograd --------------------------------------------------------------------------------------


def well_separated_logits(T, E, seed):
    """float64 logits whose keys differ by >= 0.01: gradcheck's perturbations keep the choice."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(E, generator=g).double() * 0.37 for _ in range(T)]
    return (torch.stack(rows) + 0.001 * torch.rand(T, E, generator=g, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"scaling_factor": 2.5},
        {"selection_bias": "random"},
        {"capacity_factor": 0.5},
        {"capacity_factor": 0.5, "drop_policy": "score"},
        {"num_routed_experts": 5, "capacity_factor": 0.75},
        {"num_groups": 2, "topk_groups": 1, "group_score": "top2_sum"},
    ],
    ids=["plain", "scaled", "bias", "capacity", "capacity_score", "local_experts", "groups"],
)
def test_gradcheck(score_func, renormalize, extra, device):
    logits = well_separated_logits(12, 6, seed=11).detach().to(device).requires_grad_()
    kwargs = dict(extra, score_func=score_func, renormalize=renormalize)
    if kwargs.get("selection_bias") == "random":
        kwargs["selection_bias"] = torch.linspace(-0.2, 0.3, 6, dtype=torch.float64, device=device)
    k = 3 if "num_groups" not in kwargs else 2

    def fn(x):
        r = route_topk(x, k, **kwargs)
        return r.topk_weights, r.slot_weights

    assert torch.autograd.gradcheck(fn, (logits,))


def test_gradient_of_dropped_slot_is_zero_but_normaliser_counts():
    logits = well_separated_logits(8, 4, seed=12)
    r = route_topk(logits, 2, capacity_factor=0.5, drop_policy="position")
    assert int(r.num_dropped) > 0
    r.topk_weights.sum().backward()
    g = logits.grad.clone()
    # by hand: w_j = q_j for kept slots, 0 for dropped ones; dL/dx = sum over kept of dq_j/dx
    x = logits.detach().clone().requires_grad_()
    sel = torch.softmax(x.gather(1, r.topk_experts), -1)
    (sel * (r.topk_weights != 0)).sum().backward()
    ref = torch.zeros_like(x)
    ref.scatter_(1, r.topk_experts, x.grad.gather(1, r.topk_experts))
    torch.testing.assert_close(g, ref)


def test_autograd_from_bfloat16_logits():
    logits = torch.randn(20, 8, dtype=torch.bfloat16, requires_grad=True)
    r = route_topk(logits, 2)
    (r.topk_weights * torch.arange(2.0)).sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_backward_only_one_output_used():
    logits = well_separated_logits(10, 5, seed=13)
    route_topk(logits, 2).slot_weights.pow(2).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_integer_outputs_do_not_require_grad():
    r = route_topk(torch.randn(5, 4, requires_grad=True), 2)
    assert r.topk_weights.requires_grad and r.slot_weights.requires_grad
    for name in ("topk_experts", "token_index", "expert_index", "slot_index", "expert_counts", "expert_load", "num_dropped"):
        assert not getattr(r, name).requires_grad


# ---- opcheck ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"score_func": "sigmoid", "renormalize": False, "scaling_factor": 2.0},
        {"num_groups": 4, "topk_groups": 2, "group_score": "top2_sum"},
        {"num_groups": 2, "group_score": "balanced"},
        {"num_routed_experts": 6, "capacity_factor": 1.0, "drop_policy": "score"},
    ],
)
def test_opcheck(kwargs):
    logits = torch.randn(33, 8, requires_grad=True)
    torch.library.opcheck(sy.route_topk.default, (logits, 2), kwargs)


def test_opcheck_with_bias():
    logits = torch.randn(17, 8, requires_grad=True)
    torch.library.opcheck(sy.route_topk.default, (logits, 3), {"selection_bias": torch.randn(8)})


def test_opcheck_backward():
    logits = torch.randn(9, 6)
    r = sy.route_topk(logits, 2, capacity_factor=1.0)
    args = (torch.randn(9, 2), torch.randn(18), logits, r[1], r[4], r[6], 2, "softmax", True, 1.0)
    torch.library.opcheck(sy.route_topk_backward.default, args)


def test_meta_shapes():
    logits = torch.empty(11, 8, device="meta", dtype=torch.bfloat16)
    r = sy.route_topk(logits, 3, num_routed_experts=6)
    assert r[0].shape == (11, 3) and r[0].dtype == torch.float32 and r[0].device.type == "meta"
    assert [t.shape for t in r[2:6]] == [(33,)] * 4
    assert r[6].shape == (6,) and r[7].shape == (8,) and r[8].shape == ()


def test_torch_compile_dynamic():
    def f(x):
        r = route_topk(x, 2)
        return (r.slot_weights * r.token_index).sum()

    compiled = torch.compile(f, dynamic=True, backend="aot_eager", fullgraph=True)
    for T in (8, 13):
        x = torch.randn(T, 6)
        torch.testing.assert_close(compiled(x), f(x))


# ---- bad arguments -------------------------------------------------------------------------------


BAD = [
    ((torch.randn(4, 8), 9), {}, r"route_topk: k must be in \[1, num_experts=8\], got 9"),
    ((torch.randn(4, 8), 0), {}, r"route_topk: k must be in \[1, num_experts=8\], got 0"),
    ((torch.randn(4, 8), -1), {}, r"k must be in \[1, num_experts=8\], got -1"),
    ((torch.randn(4, 8, 2), 1), {}, r"logits must be a 2-D tensor \[num_tokens, num_experts\], got shape \[4, 8, 2\]"),
    ((torch.randn(8), 1), {}, r"logits must be a 2-D tensor"),
    ((torch.ones(4, 8, dtype=torch.long), 1), {}, r"logits must be float32, float64, bfloat16 or float16, got Long"),
    ((torch.randn(4, 8), 2), {"score_func": "relu"}, r"score_func must be one of 'softmax', 'sigmoid', got 'relu'"),
    ((torch.randn(4, 8), 2), {"group_score": "mean"}, r"group_score must be one of 'max', 'top2_sum', 'balanced', got 'mean'"),
    ((torch.randn(4, 8), 2), {"drop_policy": "random"}, r"drop_policy must be one of 'position', 'score', got 'random'"),
    ((torch.randn(4, 8), 2), {"capacity_factor": -1.0}, r"capacity_factor must be >= 0 \(0 = unlimited\), got -1"),
    ((torch.randn(4, 8), 2), {"selection_bias": torch.randn(7)}, r"selection_bias must be a 1-D floating tensor of length num_experts=8"),
    ((torch.randn(4, 8), 2), {"selection_bias": torch.randn(2, 4)}, r"selection_bias must be a 1-D floating tensor of length num_experts=8"),
    ((torch.randn(4, 8), 2), {"selection_bias": torch.ones(8, dtype=torch.long)}, r"selection_bias must be a 1-D floating tensor"),
    ((torch.randn(4, 8), 2), {"selection_bias": torch.randn(8, device="meta")}, r"selection_bias must be on the same device as logits \(cpu\), got meta"),
    ((torch.randn(4, 8), 2), {"num_groups": 3}, r"the 8 routed experts \(num_routed_experts\) must split evenly into num_groups=3 groups"),
    ((torch.randn(4, 8), 2), {"num_groups": 0}, r"num_groups must be >= 1, got 0"),
    ((torch.randn(4, 8), 2), {"num_groups": 4, "topk_groups": 5}, r"topk_groups must be in \[0, num_groups=4\] \(0 = all groups\), got 5"),
    ((torch.randn(4, 8), 6), {"num_groups": 4, "group_score": "balanced"}, r"group_score='balanced' needs k divisible by num_groups=4, got k=6"),
    ((torch.randn(4, 8), 2), {"num_groups": 2, "group_score": "balanced", "num_routed_experts": 6}, r"group_score='balanced' does not support local experts"),
    ((torch.randn(4, 8), 6), {"num_groups": 4, "topk_groups": 2}, r"group-limited routing keeps 4 experts \(topk_groups=2 of num_groups=4 groups of 2 routed experts, plus 0 local experts\), fewer than k=6"),
    ((torch.randn(4, 8), 1), {"num_groups": 8, "topk_groups": 2, "group_score": "top2_sum"}, r"group_score='top2_sum' needs at least 2 experts per group, got 1"),
    ((torch.randn(4, 8), 2), {"num_routed_experts": 9}, r"num_routed_experts must be in \[1, num_experts=8\] or -1 \(all\), got 9"),
    ((torch.randn(4, 8), 2), {"num_routed_experts": 0}, r"num_routed_experts must be in \[1, num_experts=8\] or -1 \(all\), got 0"),
    ((torch.randn(4, 8), 2), {"scaling_factor": float("inf")}, r"scaling_factor must be finite, got inf"),
]


@pytest.mark.parametrize("args,kwargs,message", BAD)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        route_topk(*args, **kwargs)


def test_bad_arguments_on_meta():
    with pytest.raises(RuntimeError, match=r"k must be in \[1, num_experts=8\], got 9"):
        sy.route_topk(torch.empty(4, 8, device="meta"), 9)


@pytest.mark.gpu
def test_bias_on_another_device():
    with pytest.raises(RuntimeError, match=r"selection_bias must be on the same device as logits \(cuda:0\), got cpu"):
        route_topk(torch.randn(4, 8, device="cuda"), 2, selection_bias=torch.randn(8))
