"""Router helpers: input jitter and router logits with the MoE++ gating residual.

Each function wraps one ``torch.ops.switchyard.*`` operator written in C++ with ATen ops
(``csrc/switchyard/ops/router.cpp``); see ``docs/losses.md``.
"""

from __future__ import annotations

import torch

__all__ = ["router_jitter", "router_logits"]

_ops = torch.ops.switchyard


def router_jitter(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Switch Transformer multiplicative jitter ``x * U(1 - eps, 1 + eps)``.

    The noise comes from torch's default generator (``torch.manual_seed`` reproduces it).
    Apply it in training only.

    Args:
        x: floating tensor of any shape (the router input).
        eps: noise half-width in ``[0, 1]``; ``0`` returns ``x`` itself.
    """
    return _ops.router_jitter(x, eps)


def router_logits(
    x: torch.Tensor,
    weight: torch.Tensor,
    prev_logits: torch.Tensor | None = None,
    residual_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Router logits ``x @ weight.T``, plus the MoE++ gating residual.

    Args:
        x: ``[T, d]`` router input.
        weight: ``[E, d]`` router weight (same dtype as ``x``).
        prev_logits: ``[T, E_prev]`` logits of the previous MoE layer, or None.
        residual_weight: ``[E, E_prev]`` residual map, or None; given exactly when
            ``prev_logits`` is, and then ``prev_logits @ residual_weight.T`` is added.

    Returns:
        ``[T, E]`` logits in ``x``'s dtype.
    """
    return _ops.router_logits(x, weight, prev_logits, residual_weight)
