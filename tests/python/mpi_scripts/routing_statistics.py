"""Routing statistics over ranks (switchyard.trace, docs/routing_trace.md).

1. Random routings: each rank records its own tokens; reduced() equals the single-process
   statistics of every rank's tokens, traffic row r filled by rank r only, EMA summed.
2. A real MoETransformer trained by ShardedEngine with expert parallelism over all ranks: one
   step's statistics, reduced, equal those of a single-process model (same seed) running
   every rank's micro-batch, each recorded as coming from that rank.
3. Ranks that ended different numbers of steps: reduced() refuses on every rank.

Usage: mpirun -np R python routing_statistics.py
Prints "routing statistics ok rank=R" when every check passes.
"""

import torch

import switchyard
import switchyard.comm as comm
from switchyard import trace
from switchyard.config import loads_config
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine

VOCAB = 53
OPTIONS = dict(vocab_size=VOCAB, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=24, max_seq_len=16,
               moe_layer_freq=1, first_k_dense=0, tie_embeddings=True, init_std=0.1,
               moe=dict(num_experts=4, top_k=2, ffn_hidden=12, num_shared_experts=1, aux_loss_coeff=0.05))
KEYS = ("tokens", "tokens_ema", "traffic", "coactivation", "transitions")


def same(name, a, b, where):
    if a is None or b is None:
        assert a is None and b is None, f"{where}: {name}: one is None"
        return
    if a.shape != b.shape or not torch.equal(a, b):
        raise AssertionError(f"{where}: {name} differs:\n{a}\n{b}")


def random_routing(g, T, K, E, extra):
    topk = torch.stack([torch.randperm(E + extra, generator=g)[:K] for _ in range(T)])
    kept = torch.rand(T, K, generator=g) < 0.8
    return topk, kept


def check_random(world):
    R, rank = world.size, world.rank
    experts = [5, 3]
    mine = trace.RoutingStatistics(experts, R, rank, 0.5)
    refs = [trace.RoutingStatistics(experts, R, r, 0.5) for r in range(R)]
    for step in range(2):
        for r in range(R):
            g = torch.Generator().manual_seed(1000 * step + r)
            T = 6 + r + step
            for l, E in enumerate(experts):
                topk, kept = random_routing(g, T, 2, E, 2)
                refs[r].record(l, topk, kept)
                if r == rank:
                    mine.record(l, topk, kept)
        mine.end_step()
        for s in refs:
            s.end_step()
    total = mine.reduced(world)
    assert total.steps == 2 and total.source_rank == 0
    where = f"rank {rank} random"
    for l in range(len(experts)):
        got = total.layer(l)
        want = {k: None if refs[0].layer(l)[k] is None else sum(s.layer(l)[k] for s in refs) for k in KEYS}
        for k in KEYS:
            same(f"layer {l} {k}", got[k], want[k], where)
        # row r of the traffic is rank r's tokens only
        for r in range(R):
            same(f"layer {l} traffic row {r}", got["traffic"][r], refs[r].layer(l)["tokens"], where)


def check_sharded(world):
    R, rank = world.size, world.rank
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, VOCAB, (2, 5 + r), generator=g), torch.randint(0, VOCAB, (2, 5 + r), generator=g))
               for r in range(R)]
    torch.manual_seed(0)
    ref = MoETransformer(**OPTIONS).double()
    ref.train()
    experts = [layer["num_experts"] for layer in trace.moe_layers(ref)]
    assert experts == [4, 4, 4], experts
    refs = []
    for r in range(R):
        s = trace.RoutingStatistics(experts, R, r)
        s.attach(ref)
        ref(*batches[r])
        s.end_step()
        refs.append(s)

    cfg = loads_config("", overrides=[f"parallel.expert_parallel={R}", "parallel.shard_dense=true",
                                      "train.grad_accum=1", "train.precision=fp64"])
    torch.manual_seed(0)
    model = MoETransformer(**OPTIONS).double()
    engine = ShardedEngine(model, cfg, world)
    stats = trace.for_model(model, num_source_ranks=R, source_rank=rank)
    engine.step([batches[rank]], 1e-3)
    stats.end_step()
    total = stats.reduced(world)
    where = f"rank {rank} sharded"
    for l in range(len(experts)):
        got = total.layer(l)
        for k in KEYS:
            want = None if refs[0].layer(l)[k] is None else sum(s.layer(l)[k] for s in refs)
            same(f"layer {l} {k}", got[k], want, where)
        assert got["transitions_skipped"] == 0, got["transitions_skipped"]
    assert float(total.layer(0)["tokens"].sum()) == 2 * sum(b[0].numel() for b in batches)


def check_step_mismatch(world):
    stats = trace.RoutingStatistics([2], world.size, world.rank)
    for _ in range(world.rank + 1):
        stats.end_step()
    try:
        stats.reduced(world)
    except ValueError as e:
        assert "different numbers of steps" in str(e), str(e)
    else:
        raise AssertionError("reduced() accepted ranks with different step counts")


def main():
    info = switchyard.init()
    world = comm.world()
    check_random(world)
    check_sharded(world)
    if world.size > 1:
        check_step_mismatch(world)
    print(f"routing statistics ok rank={info.rank}", flush=True)


if __name__ == "__main__":
    main()
