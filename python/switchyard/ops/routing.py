"""Routing operators: top-k routing (with its variants) and expert-choice routing.

Thin wrappers over ``torch.ops.switchyard.route_topk`` and
``torch.ops.switchyard.route_expert_choice`` (C++ kernels for CPU and CUDA, autograd in
C++). They name the outputs; all arithmetic happens in the operators. docs/routing.md
states the exact semantics.

Shape legend: T tokens, E router outputs (experts), E_r routed experts (the first E_r; the
rest are local: AdaMoE null experts, MoE++ zero-computation experts), K top-k, S = T*K
slots, C capacity.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["Routing", "ExpertChoiceRouting", "route_topk", "route_expert_choice"]


class Routing(NamedTuple):
    """Result of :func:`route_topk`.

    The grouped arrays (``token_index``, ``expert_index``, ``slot_index``,
    ``slot_weights``) list all S = T*K slots: first the kept routed slots sorted by
    (expert, token), expert e's block holding ``expert_counts[e]`` slots, then the tail
    (slots dropped by the capacity limit and slots of local experts, ``expert_index`` -1)
    in ascending slot order.
    """

    topk_weights: torch.Tensor  #: [T,K] float32 (float64 for float64 logits); 0 where dropped
    topk_experts: torch.Tensor  #: [T,K] int64, best first
    token_index: torch.Tensor  #: [S] int64, token of each grouped slot
    expert_index: torch.Tensor  #: [S] int64, expert of each grouped slot, -1 in the tail
    slot_index: torch.Tensor  #: [S] int64, t*K + j of each grouped slot
    slot_weights: torch.Tensor  #: [S] combine weight in grouped order, 0 in the tail
    expert_counts: torch.Tensor  #: [E_r] int64, kept slots per routed expert
    expert_load: torch.Tensor  #: [E] int64, selections per expert before the capacity limit
    num_dropped: torch.Tensor  #: [] int64, slots dropped by the capacity limit

    def real_experts_per_token(self) -> torch.Tensor:
        """Mean number of routed (real) experts a token selected, before the capacity limit.

        ``K`` minus the slots that went to local experts (AdaMoE null experts, MoE++
        zero-computation experts): AdaMoE's measure of adaptive computation. A 0-dim
        float64 tensor on the logits' device (no host synchronisation).
        """
        num_tokens = max(self.topk_experts.shape[0], 1)
        routed = self.expert_counts.numel()
        return self.expert_load[:routed].sum().to(torch.float64) / num_tokens


class ExpertChoiceRouting(NamedTuple):
    """Result of :func:`route_expert_choice`: E*C entries grouped by expert, tokens
    ascending within an expert."""

    weights: torch.Tensor  #: [E*C] float32 (float64 for float64 logits): the score
    token_index: torch.Tensor  #: [E*C] int64
    expert_index: torch.Tensor  #: [E*C] int64
    expert_counts: torch.Tensor  #: [E] int64 (all equal to C)
    num_unrouted_tokens: torch.Tensor  #: [] int64, tokens no expert chose


def route_topk(
    logits: torch.Tensor,
    k: int,
    *,
    score_func: str = "softmax",
    renormalize: bool = True,
    scaling_factor: float = 1.0,
    selection_bias: Optional[torch.Tensor] = None,
    num_groups: int = 1,
    topk_groups: int = 0,
    group_score: str = "max",
    num_routed_experts: int = -1,
    capacity_factor: float = 0.0,
    drop_policy: str = "position",
) -> Routing:
    """Top-k routing: each token picks its k best experts.

    Args:
        logits: [T,E] router logits (float32, float64, bfloat16 or float16; any strides).
        k: experts per token, in [1, E].
        score_func: ``"softmax"`` (over the row) or ``"sigmoid"`` (elementwise).
        renormalize: divide each weight by the sum of the token's selected scores (for
            softmax: a softmax over the selected logits).
        scaling_factor: multiplies every weight (DeepSeek-V3's routed scaling factor).
        selection_bias: [E] floating, added to the scores to choose the experts but not to
            the weights (DeepSeek-V3 auxiliary-loss-free balancing).
        num_groups: split the routed experts into this many equal groups (1 = no groups).
        topk_groups: a token may only pick experts of its best ``topk_groups`` groups
            (0 = all groups).
        group_score: how a group is ranked: ``"max"`` (its best key), ``"top2_sum"`` (sum of
            its two best keys, DeepSeek-V3), or ``"balanced"``: every group contributes
            exactly k / num_groups experts (Pangu MoGE; ``topk_groups`` is ignored).
        num_routed_experts: E_r, the experts that travel (-1 = E). Experts E_r..E-1 are
            local (null / zero-computation): selected and weighted like others, outside the
            groups, never capacity-limited, listed in the tail of the grouped arrays.
        capacity_factor: per routed expert capacity C = ceil(capacity_factor * T * k / E_r);
            0 = unlimited.
        drop_policy: which slots an overfull expert keeps: ``"position"`` (lowest token
            index) or ``"score"`` (highest weight, ties to the lower token). Dropped slots
            get weight 0; the others are not rescaled.

    Returns:
        :class:`Routing`. ``topk_weights`` and ``slot_weights`` are differentiable w.r.t.
        ``logits``.
    """
    return Routing(
        *torch.ops.switchyard.route_topk(
            logits,
            k,
            score_func=score_func,
            renormalize=renormalize,
            scaling_factor=scaling_factor,
            selection_bias=selection_bias,
            num_groups=num_groups,
            topk_groups=topk_groups,
            group_score=group_score,
            num_routed_experts=num_routed_experts,
            capacity_factor=capacity_factor,
            drop_policy=drop_policy,
        )
    )


def route_expert_choice(
    logits: torch.Tensor, capacity_factor: float, k: int = 1, *, score_func: str = "softmax"
) -> ExpertChoiceRouting:
    """Expert-choice routing (Zhou et al. 2022): each expert picks its best tokens.

    Scores are a softmax over each token's experts (or an elementwise sigmoid). Every
    expert takes its C = min(T, ceil(capacity_factor * T * k / E)) highest-scoring tokens
    (ties to the lower token index); a token may be taken by several experts or by none.

    Args:
        logits: [T,E] router logits (float32, float64, bfloat16 or float16; any strides).
        capacity_factor: > 0.
        k: the average number of experts per token the capacity is sized for, in [1, E].
        score_func: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        :class:`ExpertChoiceRouting`; ``weights`` (the scores) are differentiable w.r.t.
        ``logits``.
    """
    return ExpertChoiceRouting(
        *torch.ops.switchyard.route_expert_choice(logits, capacity_factor, k, score_func=score_func)
    )
