"""route_expert_choice: each expert takes its top-C tokens (Zhou et al. 2022).

Compared with an independent float64 reference written here in plain PyTorch on seeded
random shapes and edge cases (ties, T=0, T=1, E=1, non-contiguous logits, every dtype);
then gradcheck, opcheck and bad arguments. Reruns on CUDA (marked `gpu`) with a GPU.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import switchyard  # noqa: F401  (loads torch.ops.switchyard)
from switchyard.ops import ExpertChoiceRouting, route_expert_choice

sy = torch.ops.switchyard

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def reference_expert_choice(logits, capacity_factor, k=1, score_func="softmax"):
    x = logits.detach().to("cpu", torch.float64)
    T, E = x.shape
    scores = torch.softmax(x, dim=-1) if score_func == "softmax" else torch.sigmoid(x)
    C = min(T, math.ceil(capacity_factor * T * k / E))
    tokens, experts, weights = [], [], []
    chosen = set()
    for e in range(E):
        best = torch.argsort(-scores[:, e], stable=True)[:C]  # ties to the lower token
        mine = sorted(best.tolist())
        chosen.update(mine)
        tokens += mine
        experts += [e] * C
        weights += [float(scores[t, e]) for t in mine]
    return {
        "token_index": torch.tensor(tokens, dtype=torch.long),
        "expert_index": torch.tensor(experts, dtype=torch.long),
        "weights": torch.tensor(weights, dtype=torch.float64),
        "expert_counts": torch.full((E,), C, dtype=torch.long),
        "num_unrouted_tokens": torch.tensor(T - len(chosen), dtype=torch.long),
    }


def check(logits, capacity_factor, k=1, score_func="softmax"):
    got = route_expert_choice(logits, capacity_factor, k, score_func=score_func)
    assert isinstance(got, ExpertChoiceRouting)
    ref = reference_expert_choice(logits, capacity_factor, k, score_func)
    wdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert got.weights.dtype == wdtype
    for name in ("token_index", "expert_index", "expert_counts", "num_unrouted_tokens"):
        assert getattr(got, name).dtype == torch.long
        torch.testing.assert_close(getattr(got, name).cpu(), ref[name], rtol=0, atol=0, msg=name)
    tol = dict(rtol=1e-12, atol=1e-14) if wdtype == torch.float64 else dict(rtol=2e-6, atol=2e-7)
    torch.testing.assert_close(got.weights.cpu().double(), ref["weights"], **tol)
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(120))
def test_random_configurations(seed, device):
    rng = random.Random(seed)
    T = rng.choice([0, 1, 2, 9, 31, 100, 257])
    E = rng.choice([1, 2, 3, 8, 16, 40])
    k = rng.randint(1, E)
    capacity_factor = rng.choice([0.1, 0.5, 1.0, 1.3, 2.0, 8.0])
    score_func = rng.choice(["softmax", "sigmoid"])
    dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16, torch.float16])
    logits = (torch.randn(T, E, dtype=torch.float64) * 2).to(dtype).to(device)
    check(logits, capacity_factor, k, score_func)


@pytest.mark.parametrize("device", DEVICES)
def test_edge_shapes(device):
    check(torch.empty(0, 4, device=device), 1.0)
    got = check(torch.randn(1, 4, device=device), 1.0)
    assert got.token_index.tolist() == [0, 0, 0, 0]
    got = check(torch.randn(7, 1, device=device), 1.0)
    assert got.weights.tolist() == [1.0] * 7  # softmax over one expert
    check(torch.randn(7, 1, device=device), 0.5, score_func="sigmoid")


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_is_capped_at_num_tokens(device):
    got = check(torch.randn(10, 4, device=device), 100.0, k=4)
    assert torch.all(got.expert_counts == 10) and int(got.num_unrouted_tokens) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_token(device):
    # sigmoid scores depend on the logit alone: integer logits tie exactly
    torch.manual_seed(0)
    logits = torch.randint(-2, 3, (64, 8)).float().to(device)
    check(logits, 0.5, 2, score_func="sigmoid")
    # softmax: duplicated rows tie exactly
    rows = torch.randint(-2, 3, (5, 8)).float()
    check(rows.repeat(12, 1).to(device), 0.5, 2)
    got = check(torch.zeros(20, 4, device=device), 0.5)
    assert got.token_index.tolist() == list(range(3)) * 4


@pytest.mark.parametrize("device", DEVICES)
def test_unrouted_tokens(device):
    torch.manual_seed(1)
    logits = torch.randn(50, 4, device=device)
    logits[:, 0] += 10  # everyone loves expert 0 ...
    logits[:10, 1:] += 20  # ... but tokens 0-9 love the others even more
    got = check(logits, 0.2)
    assert int(got.num_unrouted_tokens) > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_and_non_contiguous(dtype, device):
    torch.manual_seed(2)
    base = torch.randn(12, 80, dtype=dtype, device=device)
    check(base.t(), 1.0, 2)
    check(base.t()[::3], 1.5, 1, score_func="sigmoid")
    check(base[:, 1::2].contiguous().t(), 0.7, 3)


# ---- autograd, opcheck -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_gradcheck(score_func, device):
    g = torch.Generator().manual_seed(3)
    # well separated scores: gradcheck's perturbations keep every expert's choice
    logits = torch.stack([torch.randperm(5, generator=g).double() * 0.41 for _ in range(9)])
    logits = (logits + 0.001 * torch.rand(9, 5, generator=g, dtype=torch.float64)).to(device)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: route_expert_choice(x, 0.8, 2, score_func=score_func).weights, (logits,)
    )


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_opcheck(score_func):
    logits = torch.randn(21, 6, requires_grad=True)
    torch.library.opcheck(sy.route_expert_choice.default, (logits, 1.5, 2), {"score_func": score_func})


def test_opcheck_backward():
    logits = torch.randn(9, 4)
    r = sy.route_expert_choice(logits, 1.0, 2)
    torch.library.opcheck(
        sy.route_expert_choice_backward.default, (torch.randn(r[0].shape[0]), logits, r[1], r[2], "softmax")
    )


def test_integer_outputs_do_not_require_grad():
    r = route_expert_choice(torch.randn(6, 3, requires_grad=True), 1.0)
    assert r.weights.requires_grad
    assert not any(t.requires_grad for t in (r.token_index, r.expert_index, r.expert_counts, r.num_unrouted_tokens))


# ---- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((torch.randn(4, 8), 0.0), {}, r"route_expert_choice: capacity_factor must be > 0, got 0"),
        ((torch.randn(4, 8), -1.0), {}, r"capacity_factor must be > 0, got -1"),
        ((torch.randn(4, 8), 1.0, 9), {}, r"route_expert_choice: k must be in \[1, num_experts=8\], got 9"),
        ((torch.randn(4, 8), 1.0, 0), {}, r"k must be in \[1, num_experts=8\], got 0"),
        ((torch.randn(4, 8), 1.0), {"score_func": "tanh"}, r"score_func must be one of 'softmax', 'sigmoid', got 'tanh'"),
        ((torch.randn(2, 4, 8), 1.0), {}, r"route_expert_choice: logits must be a 2-D tensor"),
        ((torch.ones(4, 8, dtype=torch.int32), 1.0), {}, r"logits must be float32, float64, bfloat16 or float16, got Int"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        route_expert_choice(*args, **kwargs)
