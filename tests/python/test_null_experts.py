"""AdaMoE null experts through route_topk: local slots leave the Routing, and the Routing
reports the mean number of real experts per token."""

from __future__ import annotations

import pytest
import torch

import switchyard  # noqa: F401
from switchyard import ops


def reference_real_experts_per_token(logits: torch.Tensor, k: int, num_real: int) -> float:
    # Independent: a stable descending sort of the float64 softmax scores, ties to the
    # lower expert index, then count the picks below num_real.
    scores = torch.softmax(logits.double(), dim=-1)
    order = torch.sort(-scores, dim=-1, stable=True).indices[:, :k]
    return float((order < num_real).sum()) / max(logits.shape[0], 1)


@pytest.mark.parametrize("num_tokens", [0, 1, 37, 512])
@pytest.mark.parametrize("num_real,num_null,k", [(6, 2, 2), (8, 8, 4), (4, 1, 5), (1, 3, 2)])
def test_real_experts_per_token_matches_reference(num_tokens, num_real, num_null, k):
    gen = torch.Generator().manual_seed(num_tokens * 100 + num_real * 10 + num_null)
    logits = torch.randn(num_tokens, num_real + num_null, generator=gen)
    routing = ops.route_topk(logits, k, num_routed_experts=num_real)
    expected = reference_real_experts_per_token(logits, k, num_real)
    assert routing.real_experts_per_token().dtype == torch.float64
    assert routing.real_experts_per_token().item() == pytest.approx(expected, abs=1e-12)
    # The slots that chose a null expert are not in the routed blocks: exactly the
    # real-expert slots are grouped, and they are all kept (no capacity limit).
    assert int(routing.expert_counts.sum()) == round(expected * num_tokens)


def test_null_slots_keep_weights_but_never_travel():
    # Token 0 prefers null expert 3 (index >= num_routed_experts = 3), token 1 real expert 0.
    logits = torch.tensor([[0.0, 1.0, 0.5, 4.0], [3.0, 0.0, 0.0, 0.0]])
    routing = ops.route_topk(logits, 2, num_routed_experts=3)
    assert routing.topk_experts.tolist() == [[3, 1], [0, 1]]
    assert routing.expert_counts.tolist() == [1, 2, 0]
    assert routing.real_experts_per_token().item() == pytest.approx(1.5)
    # The null slot (token 0, slot 0) sits in the tail with expert -1 and weight 0 there,
    # while its token-major weight is kept for the local (zero-output) expert.
    tail = routing.expert_index[3:]
    assert tail.tolist() == [-1]
    assert routing.slot_index[3:].tolist() == [0]
    assert routing.topk_weights[0, 0] > routing.topk_weights[0, 1] > 0
