"""MoE++ zero-computation experts (zero, copy and constant experts).

Wraps ``torch.ops.switchyard.zero_compute_experts`` (``csrc/switchyard/ops/zero_compute.cpp``);
see ``docs/losses.md`` for the formulas.
"""

from __future__ import annotations

import torch

__all__ = ["zero_compute_experts"]


def zero_compute_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_experts: torch.Tensor,
    first_expert: int,
    num_zero: int,
    num_copy: int,
    const_vectors: torch.Tensor,
    const_gate_weight: torch.Tensor,
    *,
    num_experts: int = -1,
) -> torch.Tensor:
    """Output of the MoE++ zero-computation experts for every token.

    The zero-computation experts take the expert ids ``first_expert ..
    first_expert + num_zero + num_copy + Nc - 1``, in the order zero, copy, constant. For
    every slot ``(t, j)`` routed to one of them the result gains
    ``topk_weights[t, j] * E(x[t])`` with

    * zero expert: ``E(x) = 0`` (the token is discarded),
    * copy expert: ``E(x) = x``,
    * constant expert ``i``: ``[a1, a2] = softmax(const_gate_weight[i] @ x)``,
      ``E(x) = a1 * x + a2 * const_vectors[i]``.

    Slots on any other expert contribute nothing, so the result is added to the routed
    experts' output. Differentiable w.r.t. ``x``, ``topk_weights``, ``const_vectors`` and
    ``const_gate_weight``.

    Args:
        x: ``[T, d]`` tokens.
        topk_weights: ``[T, K]`` floating combine weights.
        topk_experts: ``[T, K]`` int64 expert ids.
        first_expert: id of the first zero-computation expert (``>= 0``).
        num_zero: number of zero experts (``>= 0``).
        num_copy: number of copy experts (``>= 0``).
        const_vectors: ``[Nc, d]`` constant vectors (``x``'s dtype; ``Nc`` may be 0).
        const_gate_weight: ``[Nc, 2, d]`` gate weights of the constant experts.
        num_experts: total number of router outputs; when ``>= 0`` the expert ids and the
            zero-computation id range are checked against it.

    Returns:
        ``[T, d]`` tensor in ``x``'s dtype.
    """
    return torch.ops.switchyard.zero_compute_experts(
        x,
        topk_weights,
        topk_experts,
        first_expert,
        num_zero,
        num_copy,
        const_vectors,
        const_gate_weight,
        num_experts=num_experts,
    )
