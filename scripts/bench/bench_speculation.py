"""Benchmark: speculative capacity (docs/speculation.md) against the exact dispatcher path.

Run under mpirun (CPU, MPI), e.g.
    mpirun --oversubscribe --bind-to none -np 4 -x PYTHONPATH -x OMP_NUM_THREADS \\
        python scripts/bench/bench_speculation.py [--steps 20] [--margin 0.1]

A sequence of steps, each a fresh batch of tokens routed by top-k over E experts
(contiguous placement), under two routing regimes:
  drift   random logits plus a per-expert popularity bias that drifts slowly from step
          to step (a new batch every step: per-pair counts fluctuate by sampling noise,
          as in training);
  switch  every step sends (almost) every token to the experts of another rank: the
          worst case, each step's prediction is wrong.
Per step, on the same routing, TokenDispatcher.dispatch + combine (identity experts) runs
twice, interleaved and each timed between barriers: exact (count exchange first) and
speculative (capacities from the previous step's true counts plus --margin, as an
ExpertParallel layer does). Reported: medians over steps of the max over ranks of the
time, the time ratio speculative / exact (same run), and per step and rank the
collectives (dispatch + combine all_to_all_v calls), host reads of counts (and how many
of them the payload waited for), remote bytes sent (padding and headers included),
how often a second round ran and the rows it carried. The first step (no history) is
excluded from the speculative statistics.
"""

import argparse
import math
import statistics
import time

import torch

import switchyard
import switchyard.comm as comm
import switchyard.ops as ops
from switchyard.dispatch import ExpertPlacement, TokenDispatcher


def timed(world, fn):
    world.barrier()
    t0 = time.perf_counter()
    out = fn()
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    world.all_reduce(dt, "max")
    return dt.item(), out


def capacity(rows, margin):
    return rows + math.ceil(margin * rows)


def run(world, regime, T, d, E, K, steps, margin):
    R, rank = world.size, world.rank
    placement = ExpertPlacement.contiguous(E, R)
    disp = TokenDispatcher(world, placement)
    g = torch.Generator().manual_seed(77)  # the same on every rank: one shared bias walk
    gl = torch.Generator().manual_seed(1000 + rank)  # this rank's tokens
    bias = torch.randn(E, generator=g) * 0.5
    x = torch.randn(T, d, generator=gl)
    last = None
    rows = []  # per step: (t_exact, t_spec, stats_exact, stats_spec)
    for step in range(steps):
        if regime == "drift":
            bias = bias + 0.05 * torch.randn(E, generator=g)
            logits = torch.randn(T, E, generator=gl) + bias
        else:
            target = torch.zeros(E)
            target[placement.local_experts(step % R)] = 6.0
            logits = torch.randn(T, E, generator=gl) + target
        r = ops.route_topk(logits, K)

        def exact():
            h, rws, _ = disp.dispatch(x, r)
            disp.combine(h, rws)
            return h

        caps = None
        if last is not None:
            caps = ([capacity(n, margin) for n in last[0]], [capacity(n, margin) for n in last[1]])

        def spec():
            h, rws, _ = disp.dispatch(x, r, caps)
            disp.combine(h, rws)
            return h

        with torch.no_grad():
            te, he = timed(world, exact)
            ts, hs = timed(world, spec)
        assert he.send_splits == hs.send_splits and he.recv_splits == hs.recv_splits
        last = (hs.send_splits, hs.recv_splits)
        if step > 0:
            rows.append((te, ts, he.stats, hs.stats))
    return rows


def summarise(world, rows):
    def per_step(st):  # this rank's cost of one dispatch + combine
        return [st["collectives"] + 1, st["host_syncs"], st["host_syncs_before_payload"],
                st["bytes_moved"] + st["bytes_combine_sent"], st["padding_bytes"], st["second_round"],
                st["overflow_rows_sent"]]

    n = len(rows)
    acc = torch.zeros(2, 7, dtype=torch.float64)
    for _, _, se, ss in rows:
        acc[0] += torch.tensor(per_step(se), dtype=torch.float64)
        acc[1] += torch.tensor(per_step(ss), dtype=torch.float64)
    world.all_reduce(acc)  # sum over ranks
    acc /= n * world.size  # mean per rank and step
    any_second = torch.tensor([sum(1 for r in rows if r[3]["second_round"])], dtype=torch.float64)
    te = statistics.median(r[0] for r in rows)
    ts = statistics.median(r[1] for r in rows)
    # fraction of steps in which some rank needed a second round
    flags = torch.tensor([r[3]["second_round"] for r in rows], dtype=torch.float64)
    world.all_reduce(flags, "max")
    return te, ts, acc, flags.mean().item(), any_second


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--margin", type=float, default=0.1)
    a = p.parse_args()
    switchyard.init()
    world = comm.world()
    configs = [  # (T tokens per rank, d, E, K): latency-bound small batches, then bandwidth-bound
        (64, 256, 16, 2),
        (512, 512, 16, 2),
        (4096, 1024, 16, 2),
    ]
    for T, d, E, K in configs:
        for regime in ("drift", "switch"):
            rows = run(world, regime, T, d, E, K, a.steps, a.margin)
            te, ts, acc, frac, _ = summarise(world, rows)
            if world.rank == 0:
                e, s = acc[0].tolist(), acc[1].tolist()
                print(f"R={world.size} T={T} d={d} top-{K}/{E} {regime:6s} margin={a.margin}: "
                      f"exact {te * 1e3:.2f} ms, speculative {ts * 1e3:.2f} ms, ratio {ts / te:.3f} | "
                      f"collectives {e[0]:.0f} -> {s[0]:.0f}, host syncs {e[1]:.0f} -> {s[1]:.0f} "
                      f"(before payload {e[2]:.0f} -> {s[2]:.0f}), bytes/rank {e[3] / 2**10:.1f} -> "
                      f"{s[3] / 2**10:.1f} KiB (padding {s[4] / 2**10:.1f} KiB), second round in "
                      f"{100 * frac:.0f}% of steps (per rank {100 * s[5]:.0f}%), overflow rows/rank "
                      f"{s[6]:.1f}", flush=True)


if __name__ == "__main__":
    main()
