"""Grouped matrix products: every expert's projection in one call.

Each function wraps one ``torch.ops.switchyard.*`` operator (CPU: parallel tiles of
single-threaded BLAS products; CUDA: torch's grouped GEMM for bfloat16, per-expert cuBLAS
otherwise); see ``docs/moe_layer.md``.
"""

from __future__ import annotations

import torch

__all__ = ["grouped_mm", "grouped_mm_weight_grad"]

_ops = torch.ops.switchyard


def grouped_mm(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, *, trans_b: bool = False) -> torch.Tensor:
    """Per-expert products on rows grouped by expert.

    Expert ``e`` owns ``counts[e]`` consecutive rows of ``a`` (experts in order, from row
    0); its rows are multiplied by ``b[e]`` (or ``b[e].T`` with ``trans_b``). Rows past
    ``counts.sum()`` are not read and come out 0. Differentiable in ``a`` and ``b``.

    Args:
        a: ``[N, k]`` rows grouped by expert.
        b: ``[E, k, n]`` per-expert weights (``[E, n, k]`` with ``trans_b``), a's dtype.
        counts: ``[E]`` int64 rows per expert, on a's device.

    Returns:
        ``[N, n]``.
    """
    return _ops.grouped_mm(a, b, counts, trans_b=trans_b)


def grouped_mm_weight_grad(a: torch.Tensor, grad_out: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``out[e] = a[rows of e].T @ grad_out[rows of e]`` (``[E, k, n]``; 0 for experts without rows)."""
    return _ops.grouped_mm_weight_grad(a, grad_out, counts)
