"""Load-balancing losses and the auxiliary-loss-free bias update.

Each function wraps one ``torch.ops.switchyard.*`` operator written in C++ with ATen ops
(``csrc/switchyard/ops/losses.cpp``, ``bias_update.cpp``); the formulas and
their papers are in ``docs/losses.md``. The losses carry no coefficient: the caller scales
them.

Shapes: ``T`` tokens, ``d`` hidden size, ``E`` router outputs (routed experts plus AdaMoE
null experts and MoE++ zero-computation experts; never DeepSeekMoE shared experts, which
are not routed), ``K`` top-k.
"""

from __future__ import annotations

import torch

__all__ = [
    "sequence_aux_loss",
    "switch_aux_loss",
    "update_expert_bias_",
    "z_loss",
]

_ops = torch.ops.switchyard


def switch_aux_loss(
    logits: torch.Tensor,
    topk_experts: torch.Tensor,
    *,
    score_func: str = "softmax",
    num_null_experts: int = 0,
) -> torch.Tensor:
    """Switch Transformer / GShard load-balancing loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of the ``T*K`` routing slots that chose expert ``e`` and
    ``P_e`` the mean normalised score of ``e`` over the tokens; the loss is 1 when both are
    uniform. Gradients flow through ``P`` only.

    Args:
        logits: ``[T, E]`` router logits (any floating dtype; the loss is computed in
            float32, or float64 for float64 logits).
        topk_experts: ``[T, K]`` int64 expert ids in ``[0, E)`` chosen by the router.
        score_func: ``"softmax"`` (softmax over all E outputs) or ``"sigmoid"``
            (sigmoid scores normalised to sum to 1 per token, as in DeepSeek-V3).
        num_null_experts: the last ``N`` of the ``E`` outputs are AdaMoE null experts;
            they are balanced as one pool (each null's ``f`` and ``P`` replaced by the pool
            mean). ``0 <= N < E``.

    Returns:
        A 0-d tensor (0 when ``T == 0``).
    """
    return _ops.switch_aux_loss(
        logits, topk_experts, score_func=score_func, num_null_experts=num_null_experts
    )


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_e logits[t, e])**2``.

    Args:
        logits: ``[T, E]`` router logits; computed in float32 or higher.

    Returns:
        A 0-d tensor (0 when ``T == 0``).
    """
    return _ops.z_loss(logits)


def sequence_aux_loss(
    logits: torch.Tensor,
    topk_experts: torch.Tensor,
    seq_len: int,
    *,
    score_func: str = "softmax",
) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss.

    The ``T`` tokens form ``T / seq_len`` consecutive sequences. Per sequence,
    ``f_i = E / (K * seq_len) * count_i`` and ``P_i`` is the mean normalised score of
    expert ``i``; the loss is the mean over sequences of ``sum_i f_i * P_i``.

    Args:
        logits: ``[T, E]`` router logits.
        topk_experts: ``[T, K]`` int64 expert ids in ``[0, E)``.
        seq_len: tokens per sequence; ``T`` must be a multiple of it.
        score_func: ``"softmax"`` or ``"sigmoid"`` (normalised), as in
            :func:`switch_aux_loss`.

    Returns:
        A 0-d tensor (0 when ``T == 0``).
    """
    return _ops.sequence_aux_loss(logits, topk_experts, seq_len, score_func=score_func)


def update_expert_bias_(
    bias: torch.Tensor, expert_load: torch.Tensor, update_rate: float
) -> torch.Tensor:
    """Auxiliary-loss-free balancing step (DeepSeek-V3), in place and outside autograd.

    ``bias[e] += update_rate * sign(mean(expert_load) - expert_load[e])``: overloaded
    experts are made less likely to be selected, underloaded ones more; an expert exactly
    at the mean keeps its bias.

    Args:
        bias: ``[E]`` floating selection bias (a buffer; updated in place).
        expert_load: ``[E]`` integer or floating tokens per expert (e.g. route_topk's
            ``expert_load``, summed over the batch).
        update_rate: step size ``>= 0``.

    Returns:
        ``bias`` (the same tensor, for chaining).
    """
    _ops.update_expert_bias_(bias, expert_load, update_rate)
    return bias
