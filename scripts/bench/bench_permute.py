#!/usr/bin/env python3
"""Benchmark: permute_tokens + unpermute_tokens against plain PyTorch index ops.

The baseline is the best composite we know for the same work: ``index_select`` of the kept
slots' token rows, then ``index_add_`` of the rows times their combine weights into a zero
[T,d] tensor; autograd differentiates it. It is given the kept slots as a ready index
(computed outside the timing); our operators take the whole grouped arrays, tail included.
Both run in the same process on the same routing and rows, with the same thread count;
each time is the median of several repetitions. ratio = baseline time / our time (> 1: we
are faster).

Measured: the forward alone (no autograd), and forward + backward with x and the weights
requiring gradients (backward of the baseline: index_select, a product, a row sum and
index_add_; ours: the fused unpermute_tokens_backward and one unpermute_tokens).

    python scripts/bench/bench_permute.py             # CPU table, then CUDA if a GPU exists
    python scripts/bench/bench_permute.py --markdown  # tables in Markdown (docs/permute.md)

The CUDA section also reports each operator's achieved bandwidth (bytes it must read and
write / its time) as a fraction of a device-to-device copy's (torch clone of the rows)
measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import switchyard  # noqa: F401  (loads torch.ops.switchyard)
from switchyard.ops import permute_tokens, route_topk, unpermute_tokens

sy = torch.ops.switchyard
CONFIGS = [(8, 2), (64, 8)]  # (E, k)


def baseline(x, kept_tokens, kept_weights):
    rows = x.index_select(0, kept_tokens)
    # index_add_ needs one dtype: the weights are cast to the rows' (as a plain MoE layer does)
    return torch.zeros_like(x).index_add_(0, kept_tokens, rows * kept_weights.to(x.dtype)[:, None])


def ours(x, r, weights):
    return unpermute_tokens(permute_tokens(x, r), r, weights=weights)


def median_time(fn, reps: int, warmup: int = 5, cuda: bool = False) -> float:
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


def make_case(tokens, hidden, num_experts, k, dtype, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, num_experts, generator=g)
    r = route_topk(logits.to(device), k)
    x = torch.randn(tokens, hidden, generator=g).to(dtype).to(device)
    grad_y = torch.randn(tokens, hidden, generator=g).to(dtype).to(device)
    weights = r.slot_weights  # float32 combine weights, also for 16-bit rows
    kept = (r.expert_index >= 0).nonzero().flatten()
    return r, x, grad_y, weights, r.token_index[kept], weights[kept]


def check_same(x, r, weights, kept_tokens, kept_weights) -> None:
    ref = baseline(x.double(), kept_tokens, kept_weights.double())
    got = ours(x, r, weights)
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def forward_backward(fn, x, weights, grad_y):
    def run():
        xg = x.detach().requires_grad_()
        wg = weights.detach().requires_grad_()
        fn(xg, wg).backward(grad_y)

    return run


def bench(args, device: str) -> list[list[str]]:
    cuda = device == "cuda"
    out = []
    for dtype in args.dtypes:
        for num_experts, k in CONFIGS:
            r, x, grad_y, w, kept_tokens, kept_w = make_case(args.tokens, args.hidden, num_experts, k, dtype, device)
            check_same(x, r, w, kept_tokens, kept_w)
            base_fwd = lambda: baseline(x, kept_tokens, kept_w)  # noqa: E731
            ours_fwd = lambda: ours(x, r, w)  # noqa: E731
            # the baseline's weights are the kept slots' (a view would not be a leaf)
            base_fb = forward_backward(lambda xg, wg: baseline(xg, kept_tokens, wg), x, kept_w, grad_y)
            ours_fb = forward_backward(lambda xg, wg: ours(xg, r, wg), x, w, grad_y)
            with torch.no_grad():
                t_bf = median_time(base_fwd, args.reps, cuda=cuda)
                t_of = median_time(ours_fwd, args.reps, cuda=cuda)
            t_bfb = median_time(base_fb, args.reps, cuda=cuda)
            t_ofb = median_time(ours_fb, args.reps, cuda=cuda)
            name = str(dtype).replace("torch.", "")
            for phase, tb, to in (("forward", t_bf, t_of), ("fwd+bwd", t_bfb, t_ofb)):
                out.append([name, str(args.tokens), str(args.hidden), str(num_experts), str(k), phase,
                            f"{tb * 1e3:.3f}", f"{to * 1e3:.3f}", f"{tb / to:.2f}x"])
    return out


HEADER = ["dtype", "T", "d", "E", "k", "phase", "baseline", "ours", "ratio"]


def bench_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    rows = bench(args, "cpu")
    print_table(f"CPU, {args.threads} threads, median of {args.reps} (ms)", HEADER, rows, args.markdown)


def bench_cuda_bandwidth(args) -> None:
    rows = []
    for dtype in args.dtypes:
        for num_experts, k in CONFIGS:
            r, x, grad_y, w, _, _ = make_case(args.tokens, args.hidden, num_experts, k, dtype, "cuda")
            ti, ei = r.token_index, r.expert_index
            T, d = x.shape
            S = ti.numel()
            e = x.element_size()
            rows_in = sy.permute_tokens(x, ti, ei)
            t_copy = median_time(lambda: rows_in.clone(), args.reps, cuda=True)
            copy_bw = 2 * S * d * e / t_copy
            cases = [
                # (name, fn, bytes that must move: row data read + written)
                ("permute", lambda: sy.permute_tokens(x, ti, ei), 2 * S * d * e),
                ("unpermute", lambda: sy.unpermute_tokens(rows_in, ti, ei, w, T), (S + T) * d * e),
                ("unpermute_bwd", lambda: sy.unpermute_tokens_backward(grad_y, rows_in, ti, ei, w, True, True),
                 3 * S * d * e),
            ]
            for name, fn, nbytes in cases:
                t = median_time(fn, args.reps, cuda=True)
                bw = nbytes / t
                rows.append([str(dtype).replace("torch.", ""), str(T), str(d), str(num_experts), str(k), name,
                             f"{t * 1e3:.3f}", f"{bw / 1e9:.0f}", f"{copy_bw / 1e9:.0f}", f"{bw / copy_bw:.2f}"])
    print_table(f"CUDA ({torch.cuda.get_device_name()}) bandwidth, median of {args.reps}",
                ["dtype", "T", "d", "E", "k", "op", "ms", "GB/s", "clone GB/s", "fraction"], rows, args.markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens (T)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (d)")
    parser.add_argument("--threads", type=int, default=2, help="CPU: torch and OpenMP threads")
    parser.add_argument("--reps", type=int, default=21, help="repetitions per measurement")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16", "float64"],
                        help="row dtype (repeatable; default float32 and bfloat16)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    args.dtypes = [getattr(torch, name) for name in (args.dtype or ["float32", "bfloat16"])]
    if not args.skip_cpu:
        bench_cpu(args)
    if torch.cuda.is_available():
        rows = bench(args, "cuda")
        print_table(f"CUDA ({torch.cuda.get_device_name()}), median of {args.reps} (ms)", HEADER, rows,
                    args.markdown)
        bench_cuda_bandwidth(args)
    else:
        print("\nCUDA: no GPU here; CUDA section skipped")


if __name__ == "__main__":
    main()
