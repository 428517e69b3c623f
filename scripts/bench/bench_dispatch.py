"""Benchmark: the TokenDispatcher's round trip against the floor of data movement.

Run under mpirun (CPU, MPI), e.g.
    mpirun --oversubscribe --bind-to none -np 4 -x PYTHONPATH -x OMP_NUM_THREADS \\
        python scripts/bench/bench_dispatch.py [--tokens 8192] [--d 1024] [--iters 10]

For each configuration (top-2 of 16 and top-8 of 64 experts, random router logits,
contiguous placement) and the same routing:
  dispatcher  TokenDispatcher.dispatch + combine with identity experts: planning, the count
              exchange, deduplicated all-to-alls, regrouping and the weighted combine.
  floor       what any exchange must do without our bookkeeping: gather the routed rows
              (one per kept slot, destination order precomputed) into a send buffer, a raw
              all_to_all_v there and back, and the weighted scatter-add (index_add_).
The two are interleaved, each timed between barriers; medians over --iters runs (max over
ranks per run). Also prints the bytes the dedup saves (remote traffic, both directions).
"""

import argparse
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
    fn()
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    world.all_reduce(dt, "max")
    return dt.item()


def bench(world, T, d, E, K, iters):
    R, rank = world.size, world.rank
    g = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(T, d, generator=g)
    r = ops.route_topk(torch.randn(T, E, generator=g), K)
    disp = TokenDispatcher(world, ExpertPlacement.contiguous(E, R))

    def round_trip():
        h, rows, _ = disp.dispatch(x, r)
        return disp.combine(h, rows), h

    # Floor plan (untimed): kept slots sorted by destination rank; splits exchanged.
    rank_of = torch.tensor(ExpertPlacement.contiguous(E, R).rank_of_expert)
    kept = r.expert_index >= 0
    tok, exp, w = r.token_index[kept], r.expert_index[kept], r.slot_weights[kept]
    dest = rank_of[exp]
    order = torch.sort(dest, stable=True).indices
    tok, w = tok[order], w[order]
    send_splits = torch.bincount(dest, minlength=R)
    recv_splits = world.all_to_all_v(send_splits, [1] * R, [1] * R)
    s, rr = send_splits.tolist(), recv_splits.tolist()

    def floor():
        send = x.index_select(0, tok)
        recv = world.all_to_all_v(send, s, rr)
        back = world.all_to_all_v(recv, rr, s)
        return torch.zeros_like(x).index_add_(0, tok, back * w.unsqueeze(1))

    with torch.no_grad():
        y_d, h = round_trip()
        y_f = floor()
        assert torch.allclose(y_d, y_f, rtol=1e-5, atol=1e-5), (y_d - y_f).abs().max()
        td, tf = [], []
        for _ in range(iters):
            td.append(timed(world, round_trip))
            tf.append(timed(world, floor))
    st = h.stats
    b = torch.tensor([st["bytes_dispatched"] + st["bytes_combined"],
                      st["bytes_dispatched_without_dedup"] + st["bytes_combined_without_dedup"],
                      st["remote_rows_sent"], st["remote_slots_sent"]], dtype=torch.int64)
    world.all_reduce(b)
    return statistics.median(td), statistics.median(tf), b.tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    switchyard.init()
    world = comm.world()
    for E, K in ((16, 2), (64, 8)):
        td, tf, (bd, bnd, rows, slots) = bench(world, a.tokens, a.d, E, K, a.iters)
        if world.rank == 0:
            print(f"R={world.size} T={a.tokens}/rank d={a.d} top-{K}/{E}: dispatcher {td * 1e3:.1f} ms, "
                  f"floor {tf * 1e3:.1f} ms, ratio {td / tf:.2f}; remote rows {rows} vs slots {slots}; "
                  f"remote bytes (both ways) {bd / 2**20:.1f} MiB vs {bnd / 2**20:.1f} MiB without dedup "
                  f"({100 * (1 - bd / max(bnd, 1)):.1f}% saved)", flush=True)


if __name__ == "__main__":
    main()
