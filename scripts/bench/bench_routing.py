#!/usr/bin/env python3
"""Benchmark: switchyard.ops.route_topk against the PyTorch composite that computes the same.

The composite (softmax, topk, renormalize, bincount, a stable argsort of the flattened
expert ids to group the slots by expert) and our fused operator run in the same process on
the same logits, with the same thread count; each time is the median of several
repetitions. The ratio is composite time / our time (> 1: we are faster).

    python scripts/bench/bench_routing.py            # CPU table, then CUDA if a GPU exists
    python scripts/bench/bench_routing.py --markdown # tables in Markdown (docs/routing.md)

The CUDA section (T=65536) also reports the effective bandwidth: bytes of logits read
divided by the time of the whole operator.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import switchyard  # noqa: F401  (loads torch.ops.switchyard)
from switchyard.ops import route_topk


def composite_topk(logits: torch.Tensor, k: int):
    """What route_topk(logits, k) computes, written with PyTorch ops."""
    num_experts = logits.shape[1]
    scores = torch.softmax(logits, dim=-1)
    topk_weights, topk_experts = torch.topk(scores, k, dim=-1)
    topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    flat_experts = topk_experts.flatten()
    expert_counts = torch.bincount(flat_experts, minlength=num_experts)
    slot_index = torch.argsort(flat_experts, stable=True)
    token_index = slot_index // k
    expert_index = flat_experts[slot_index]
    slot_weights = topk_weights.flatten()[slot_index]
    return (topk_weights, topk_experts, token_index, expert_index, slot_index, slot_weights,
            expert_counts)


def ours_topk(logits: torch.Tensor, k: int):
    return route_topk(logits, k)


def check_same(logits: torch.Tensor, k: int) -> None:
    ref = composite_topk(logits, k)
    got = ours_topk(logits, k)
    assert torch.equal(got.topk_experts, ref[1]), "top-k experts differ from the composite"
    torch.testing.assert_close(got.topk_weights, ref[0])
    assert torch.equal(got.token_index, ref[2]) and torch.equal(got.expert_index, ref[3])
    assert torch.equal(got.slot_index, ref[4]) and torch.equal(got.expert_counts, ref[6])
    torch.testing.assert_close(got.slot_weights, ref[5])


def median_time(fn, reps: int, warmup: int = 10, cuda: bool = False) -> float:
    """Median seconds of fn() over reps runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> None:
    print()
    print(title)
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def bench_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    rows = []
    for num_experts in (8, 64, 256):
        for k in (1, 2, 8):
            if k > num_experts:
                continue
            logits = torch.randn(args.tokens, num_experts, generator=torch.Generator().manual_seed(0))
            check_same(logits, k)
            t_ref = median_time(lambda: composite_topk(logits, k), args.reps)
            t_ours = median_time(lambda: ours_topk(logits, k), args.reps)
            rows.append([str(args.tokens), str(num_experts), str(k), f"{t_ref * 1e3:.3f}",
                         f"{t_ours * 1e3:.3f}", f"{t_ref / t_ours:.1f}x"])
    print_table(f"CPU, float32, {args.threads} threads, median of {args.reps} (ms)",
                ["T", "E", "k", "composite", "route_topk", "ratio"], rows, args.markdown)


def bench_cuda(args) -> None:
    tokens = args.cuda_tokens
    rows = []
    for num_experts in (64, 256):
        for k in (1, 2, 8):
            logits = torch.randn(tokens, num_experts, device="cuda")
            check_same(logits, k)
            t_ref = median_time(lambda: composite_topk(logits, k), args.reps, cuda=True)
            t_ours = median_time(lambda: ours_topk(logits, k), args.reps, cuda=True)
            gbps = logits.numel() * logits.element_size() / t_ours / 1e9
            rows.append([str(tokens), str(num_experts), str(k), f"{t_ref * 1e3:.3f}",
                         f"{t_ours * 1e3:.3f}", f"{t_ref / t_ours:.1f}x", f"{gbps:.0f}"])
    print_table(f"CUDA ({torch.cuda.get_device_name()}), float32, median of {args.reps} (ms)",
                ["T", "E", "k", "composite", "route_topk", "ratio", "logits GB/s"], rows,
                args.markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="CPU tokens (T)")
    parser.add_argument("--cuda-tokens", type=int, default=65536, help="CUDA tokens (T)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    parser.add_argument("--reps", type=int, default=21, help="repetitions per measurement")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    if not args.skip_cpu:
        bench_cpu(args)
    if torch.cuda.is_available():
        bench_cuda(args)
    else:
        print("\nCUDA: no GPU here; CUDA section skipped")


if __name__ == "__main__":
    main()
