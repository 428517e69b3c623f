"""Communicator micro-benchmarks on CPU (MPI backend), ratios measured in one run.

  1. all_to_all_v counted in bytes (the default when counts fit an int) vs counted in rows
     of a contiguous row datatype (the path for transfers beyond 2^31 bytes, forced here by
     lowering the limit): does the derived datatype cost anything?
  2. non-blocking all_to_all_v + wait vs the blocking call (Open MPI's libnbc vs tuned).
  3. bfloat16 all_reduce through the float32 staging buffer vs a float32 all_reduce of the
     same element count: the cost of the two conversions on top of what MPI moves.

Times are medians over iterations of the slowest rank. Usage:
  mpirun -np 2 --oversubscribe --bind-to none python scripts/bench/bench_comm.py [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import switchyard
import switchyard.comm as comm
from switchyard import _C


def timed(fns, iters, warmup, world):
    """Median ms of each function (slowest rank). The functions alternate within every
    iteration, so load changes on a shared machine hit all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(iters):
        for fn, out in zip(fns, samples):
            world.barrier()
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    t = torch.tensor([statistics.median(s) for s in samples], dtype=torch.float64)
    world.all_reduce(t, "max")
    return [v * 1e3 for v in t.tolist()]


class RowDatatype:
    """all_to_all_v counted in rows: the byte counts no longer fit the (lowered) limit."""

    def __enter__(self):
        self.previous = _C.comm._set_max_mpi_count_for_testing(1 << 20)

    def __exit__(self, *exc):
        _C.comm._set_max_mpi_count_for_testing(self.previous)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192, help="rows sent per rank")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    switchyard.init()
    world = comm.world()
    size = world.size
    rows = args.tokens
    splits = [rows // size] * size
    splits[-1] += rows - sum(splits)
    x = torch.randn(rows, args.hidden)
    out = torch.empty(sum(splits), args.hidden)  # every rank sends the same splits
    mb = x.numel() * x.element_size() / 2**20
    results = []

    def a2a():
        world.all_to_all_v(x, splits, splits, out=out)

    def a2a_async():
        world.all_to_all_v(x, splits, splits, out=out, async_op=True).wait()

    def a2a_rows():
        with RowDatatype():
            a2a()

    t_bytes, t_rows, t_async = timed([a2a, a2a_rows, a2a_async], args.iters, args.warmup, world)
    results.append(("all_to_all_v, bytes (default)", f"{mb:.0f} MiB/rank", t_bytes, 1.0))
    results.append(("all_to_all_v, row datatype", f"{mb:.0f} MiB/rank", t_rows, t_rows / t_bytes))
    results.append(("all_to_all_v, async + wait", f"{mb:.0f} MiB/rank", t_async, t_async / t_bytes))

    n = rows * args.hidden // 4
    g32 = torch.randn(n)
    g16 = g32.to(torch.bfloat16)
    t_f32, t_bf16 = timed([lambda: world.all_reduce(g32), lambda: world.all_reduce(g16)], args.iters, args.warmup, world)
    results.append(("all_reduce float32", f"{n / 2**20:.1f} Mi elems", t_f32, 1.0))
    results.append(("all_reduce bfloat16 (float32 staging)", f"{n / 2**20:.1f} Mi elems", t_bf16, t_bf16 / t_f32))

    if world.rank == 0:
        if args.markdown:
            print(f"{size} ranks, {torch.get_num_threads()} threads/rank\n")
            print("| operation | size | ms | ratio |\n|---|---|---:|---:|")
            for name, what, ms, ratio in results:
                print(f"| {name} | {what} | {ms:.2f} | {ratio:.2f}× |")
        else:
            for name, what, ms, ratio in results:
                print(f"{name:42s} {what:>14s} {ms:9.2f} ms  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
