"""alpha and beta of this machine's MPI all_to_all_v, for the placement cost model.

Every rank sends m bytes to every other rank (uint8 rows through switchyard's communicator,
the path the dispatcher uses on CPU), for m = 8 B .. 8 MiB in powers of 4 (and 2 above 1 MiB).
The cost model (csrc/switchyard/placement/cost_model.h) charges a rank

    t = alpha * peers + bytes_sent / beta,   here peers = P - 1, bytes_sent = (P - 1) * m,

so the fit is t = a + b * bytes_sent by least squares on relative error (each size counts
alike, small messages are not drowned by large ones), alpha = a / (P - 1), beta = 1 / b. The
time of a size is the median over iterations of the slowest rank. On an oversubscribed machine
(more ranks + other work than cores) large messages hit scheduler time slices (milliseconds,
not bandwidth): --fit-max-bytes limits the fit to the sizes below such a step (the table
still shows every size). Usage:

  mpirun -np 2 --oversubscribe --bind-to none python scripts/bench/bench_alltoall_alpha_beta.py
  mpirun -np 4 --oversubscribe --bind-to none python scripts/bench/bench_alltoall_alpha_beta.py [--table]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import switchyard
import switchyard.comm as comm


def sizes():
    m, out = 8, []
    while m <= 8 << 20:
        out.append(m)
        m *= 4 if m < (1 << 20) else 2
    return out


def measure(world, m, iters, warmup):
    P = world.size
    x = torch.zeros(P * m, 1, dtype=torch.uint8)
    out = torch.empty_like(x)
    splits = [m] * P
    samples = []
    for i in range(warmup + iters):
        world.barrier()
        start = time.perf_counter()
        world.all_to_all_v(x, splits, splits, out=out)
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    t = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    world.all_reduce(t, "max")
    return float(t.item())


def fit(xs, ts):
    """Least squares of t = a + b x on relative error: minimise sum ((t - a - b x) / t)^2."""
    w = [1.0 / t for t in ts]
    # Normal equations of the weighted problem with rows (w, w x) and targets w t = 1.
    s11 = sum(wi * wi for wi in w)
    s12 = sum(wi * wi * x for wi, x in zip(w, xs))
    s22 = sum(wi * wi * x * x for wi, x in zip(w, xs))
    r1 = sum(wi * wi * t for wi, t in zip(w, ts))
    r2 = sum(wi * wi * x * t for wi, x, t in zip(w, xs, ts))
    det = s11 * s22 - s12 * s12
    a = (r1 * s22 - r2 * s12) / det
    b = (s11 * r2 - s12 * r1) / det
    rel = [(a + b * x - t) / t for x, t in zip(xs, ts)]
    return a, b, math.sqrt(sum(r * r for r in rel) / len(rel)), max(abs(r) for r in rel)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--table", action="store_true", help="also print every size's time and the fit's")
    p.add_argument("--fit-max-bytes", type=int, default=8 << 20, help="fit only sizes up to this (bytes per peer)")
    args = p.parse_args()
    switchyard.init()
    world = comm.world()
    P = world.size
    assert P >= 2, "run under mpirun -np 2 (or more)"
    xs, ts = [], []
    for m in sizes():
        iters = args.iters if m < (1 << 20) else max(5, args.iters // 3)
        ts.append(measure(world, m, iters, args.warmup))
        xs.append((P - 1) * m)
    keep = [i for i, x in enumerate(xs) if x // (P - 1) <= args.fit_max_bytes]
    fx, ft = [xs[i] for i in keep], [ts[i] for i in keep]
    a, b, rms, worst = fit(fx, ft)
    if world.rank == 0:
        if args.table:
            print("| bytes per peer | measured us | fit us |\n|---:|---:|---:|")
            for x, t in zip(xs, ts):
                print(f"| {x // (P - 1)} | {t * 1e6:.1f} | {(a + b * x) * 1e6:.1f} |")
        print(f"P={P} ranks, {torch.get_num_threads()} threads/rank: alpha = {a / (P - 1) * 1e6:.2f} us per peer, "
              f"beta = {1.0 / b / 1e9:.3f} GB/s per rank, fit residual: rms {100 * rms:.1f}% "
              f"(worst {100 * worst:.1f}%) over {len(fx)} sizes {min(fx) // (P - 1)} B..{max(fx) // (P - 1)} B")


if __name__ == "__main__":
    main()
