"""Cost of recording routing statistics (switchyard.trace, docs/routing_trace.md) on a
config's training step.

Run under mpirun with the config's world size (configs/demo.yaml: 2 ranks, expert
parallelism 2, CPU). Each rank builds the model and ShardedEngine as the trainer does and
trains on random tokens (micro_batch_size x data.seq_len per micro-batch); after --warmup
steps, rounds alternate between steps without statistics and steps with them attached
(end_step() each step), so drift on a shared machine hits both alike. Reports (rank 0)
the median and minimum step time of each and their ratios, one MoE layer's training forward
with and without the observer (minima), one record() of a layer's routing alone, and
reduced() over the world. On a loaded machine the step ratios are noise; the layer and
record() numbers bound the real cost.

Usage:
  mpirun -np 2 python scripts/bench/bench_routing_trace.py configs/demo.yaml --steps 6 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import switchyard
import switchyard.comm as comm
from switchyard import trace
from switchyard.config import load_config
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="steps per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer-reps", type=int, default=20, help="MoE layer forwards per mode")
    args = p.parse_args()

    switchyard.init()
    world = comm.world()
    cfg = load_config(args.config)
    groups = comm.groups(cfg)
    torch.manual_seed(cfg.train.seed)
    model = MoETransformer.from_config(cfg)
    engine = ShardedEngine(model, cfg, groups)
    ep = groups.expert_parallel
    stats = trace.for_model(model, num_source_ranks=ep.size, source_rank=ep.rank)
    trace.RoutingStatistics.detach(model)

    B, S, V = cfg.train.micro_batch_size, cfg.data.seq_len, cfg.model.vocab_size
    g = torch.Generator().manual_seed(100 + world.rank)

    def batch():
        return [(torch.randint(0, V, (B, S), generator=g), torch.randint(0, V, (B, S), generator=g))
                for _ in range(cfg.train.grad_accum)]

    def step(record: bool) -> float:
        micro = batch()
        comm.barrier(group=world)
        t0 = time.perf_counter()
        engine.step(micro, 1e-4)
        if record:
            stats.end_step()
        dt = time.perf_counter() - t0
        slowest = torch.tensor([dt], dtype=torch.float64)
        comm.all_reduce(slowest, "max", group=world)
        return float(slowest)

    for _ in range(args.warmup):
        step(False)
    plain, recorded = [], []
    for _ in range(args.rounds):
        plain += [step(False) for _ in range(args.steps)]
        stats.attach(model)
        recorded += [step(True) for _ in range(args.steps)]
        trace.RoutingStatistics.detach(model)

    # One record() alone: a layer's routing of one micro-batch.
    E, K, T = cfg.moe.num_experts, cfg.moe.top_k, B * S
    topk = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
    kept = torch.ones(T, K, dtype=torch.bool)
    lone = trace.RoutingStatistics([E], 1, 0)
    for _ in range(5):
        lone.record(0, topk, kept)
    t0 = time.perf_counter()
    n = 50
    for _ in range(n):
        lone.record(0, topk, kept)
    record_ms = (time.perf_counter() - t0) / n * 1e3

    # One MoE layer's training forward (demo shapes) with and without the observer,
    # interleaved; minima are robust to other processes on a shared machine.
    from switchyard.nn import MoELayer
    layer = MoELayer.from_config(cfg)
    x = torch.randn(T, cfg.model.d_model)
    hooked = trace.RoutingStatistics([E], 1, 0)
    bare_t, hooked_t = [], []
    for i in range(2 * args.layer_reps):
        on = i % 2 == 1
        if on:
            hooked.attach(layer)
        t0 = time.perf_counter()
        layer(x)
        (hooked_t if on else bare_t).append(time.perf_counter() - t0)
        trace.RoutingStatistics.detach(layer)

    t0 = time.perf_counter()
    total = stats.reduced(world)
    reduce_ms = (time.perf_counter() - t0) * 1e3
    if world.rank == 0:
        a, b = statistics.median(plain), statistics.median(recorded)
        L = stats.num_layers
        print(f"config {args.config}: world {world.size}, {L} MoE layers x {E} experts, top-{K}, "
              f"{T} tokens per rank per micro-batch, grad_accum {cfg.train.grad_accum}")
        print(f"step without statistics: median {a * 1e3:.1f} ms over {len(plain)} steps")
        print(f"step with statistics:    median {b * 1e3:.1f} ms over {len(recorded)} steps")
        print(f"ratio with/without: {b / a:.4f} (medians), {min(recorded) / min(plain):.4f} (minima)")
        lb, lh = min(bare_t), min(hooked_t)
        print(f"one MoE layer training forward, {T} tokens: {lb * 1e3:.2f} ms bare, {lh * 1e3:.2f} ms recording "
              f"(minima of {args.layer_reps}): ratio {lh / lb:.4f}")
        print(f"one record() of [{T}, {K}] routing, {E} experts: {record_ms:.3f} ms "
              f"({L * cfg.train.grad_accum} per step -> {record_ms * L * cfg.train.grad_accum / (a * 1e3) * 100:.2f}% "
              f"of a step)")
        print(f"reduced() over {world.size} ranks: {reduce_ms:.2f} ms; steps recorded {total.steps}, "
              f"layer-0 tokens {float(total.layer(0)['tokens'].sum()):.0f}")


if __name__ == "__main__":
    main()
