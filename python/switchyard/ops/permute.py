"""Token permutation: gather token rows into a routing's grouped order, and back.

Thin wrappers over ``torch.ops.switchyard.permute_tokens`` and
``torch.ops.switchyard.unpermute_tokens`` (C++ kernels for CPU and CUDA, autograd in C++).
They accept either the raw grouped arrays or a :class:`~switchyard.ops.Routing` /
:class:`~switchyard.ops.ExpertChoiceRouting`; all arithmetic happens in the operators.
docs/permute.md states the exact semantics.

Shape legend: T tokens, S slots (kept slots grouped by expert, then a tail with
``expert_index == -1``), d hidden size.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .routing import ExpertChoiceRouting, Routing

__all__ = ["permute_tokens", "unpermute_tokens"]

AnyRouting = Union[Routing, ExpertChoiceRouting]


def _grouped_arrays(
    op: str, token_index: Union[torch.Tensor, AnyRouting], expert_index: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(token_index, (Routing, ExpertChoiceRouting)):
        if expert_index is not None:
            raise TypeError(f"{op}: pass either a routing or token_index and expert_index, not both")
        return token_index.token_index, token_index.expert_index
    if expert_index is None:
        raise TypeError(f"{op}: expert_index is required with a token_index tensor")
    return token_index, expert_index


def permute_tokens(
    x: torch.Tensor,
    token_index: Union[torch.Tensor, AnyRouting],
    expert_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gathers token rows into grouped (by expert) order.

    ``rows[i] = x[token_index[i]]`` where ``expert_index[i] >= 0``, and zeros where it is -1
    (the tail of dropped and local slots).

    Args:
        x: [T,d] token rows (float32, float64, bfloat16 or float16; any strides).
        token_index: [S] int64, or a ``Routing`` / ``ExpertChoiceRouting`` whose grouped
            arrays are used (then leave ``expert_index`` out).
        expert_index: [S] int64, -1 marks slots that are not gathered.

    Returns:
        [S,d] in x's dtype, differentiable w.r.t. ``x`` (the backward is
        :func:`unpermute_tokens` without weights).
    """
    token_index, expert_index = _grouped_arrays("permute_tokens", token_index, expert_index)
    return torch.ops.switchyard.permute_tokens(x, token_index, expert_index)


def unpermute_tokens(
    rows: torch.Tensor,
    token_index: Union[torch.Tensor, AnyRouting],
    expert_index: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    num_tokens: Optional[int] = None,
) -> torch.Tensor:
    """Sums grouped rows back into token order, weighted: the combine step of an MoE layer.

    ``y[t] = sum(weights[i] * rows[i])`` over the slots ``i`` of token ``t`` with
    ``expert_index[i] >= 0``, summed in ascending ``i`` in float32 (float64 for float64
    rows): deterministic, independent of the thread count. Rows and weights of the tail
    are never read, so they may hold anything (even NaN).

    Args:
        rows: [S,d] grouped rows (float32, float64, bfloat16 or float16).
        token_index: [S] int64, or a ``Routing`` / ``ExpertChoiceRouting`` whose grouped
            arrays are used (then leave ``expert_index`` out).
        expert_index: [S] int64, -1 marks slots that are skipped.
        weights: [S] floating combine weights (any floating dtype, e.g. float32 weights for
            bfloat16 rows), or None for 1. A routing's weights are not used implicitly:
            pass ``routing.slot_weights`` (top-k) or ``routing.weights`` (expert choice).
        num_tokens: T. Defaults to the routing's number of tokens for a ``Routing``;
            required otherwise.

    Returns:
        [T,d] in rows' dtype, differentiable w.r.t. ``rows`` and ``weights``.
    """
    if num_tokens is None:
        if not isinstance(token_index, Routing):
            raise TypeError("unpermute_tokens: num_tokens is required unless a Routing (top-k) is given")
        num_tokens = token_index.topk_experts.shape[0]
    token_index, expert_index = _grouped_arrays("unpermute_tokens", token_index, expert_index)
    return torch.ops.switchyard.unpermute_tokens(rows, token_index, expert_index, weights, num_tokens)
