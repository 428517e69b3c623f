"""Step time with live expert re-placement on a deliberately skewed model (issue H): the
contiguous placement against the ILP's, under mpirun -np 4 (CPU), in one run.

The worker builds a MoETransformer (--experts experts, top-2, expert_parallel = the world)
whose routers' selection biases favour the first --hot experts by --skew: under the
contiguous placement they all sit on rank 0, which becomes the straggler. After --warmup
steps (the routing statistics fill up) it alternates blocks of --steps steps: contiguous,
then the placement LivePlacement.replace_now solves (GLPK ILP), then back, --rounds times.
Reported (rank 0): the median step time of each placement (every step timed on the slowest
rank), their ratio, each placement's max/mean rank load (tokens per step, from the measured
statistics), the bytes migrated per switch and the solve time.

Usage:
  python scripts/bench/bench_replacement.py [--np 4] [--experts 16] [--hot 4] [--skew 3.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def overrides(args, world: int) -> list[str]:
    return [
        "model.vocab_size=256", f"model.d_model={args.d_model}", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=4", f"model.ffn_hidden={args.ffn}", "model.max_seq_len=128",
        f"moe.num_experts={args.experts}", "moe.top_k=2", f"moe.ffn_hidden={args.ffn}", "moe.aux_loss_coeff=0",
        "moe.selection_bias=true", "moe.capacity_factor=0", "data.tokenizer=byte", f"data.seq_len={args.seq}",
        f"train.micro_batch_size={args.batch}", f"parallel.expert_parallel={world}", "train.precision=fp32",
        "placement.solver=ilp", "placement.min_gain=0",
    ]


def worker(args) -> None:
    import switchyard
    import switchyard.comm as comm
    from switchyard.config import loads_config
    from switchyard.nn import MoETransformer
    from switchyard.placement import LivePlacement
    from switchyard.sharding import ShardedEngine

    switchyard.init()
    world = comm.world()
    cfg = loads_config("", overrides=overrides(args, world.size))
    torch.manual_seed(0)
    model = MoETransformer.from_config(cfg)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("router.selection_bias"):
                buf[: args.hot] += args.skew
    engine = ShardedEngine(model, cfg, comm.groups(cfg))
    live = LivePlacement(engine, cfg)
    g = torch.Generator().manual_seed(1 + world.rank)

    def batch():
        ids = torch.randint(256, (args.batch, args.seq + 1), generator=g)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def timed_steps(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            engine.step([batch()], 1e-4)
            t = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            world.all_reduce(t, "max")
            live.after_step(engine.optimizer_step)  # records; no decision (interval 0)
            out.append(t.item())
        return out

    timed_steps(args.warmup)
    contiguous = [l["placement"] for l in engine.expert_layers()]
    times = {"contiguous": [], "ilp": []}
    decision = None
    for _ in range(args.rounds):
        times["contiguous"] += timed_steps(args.steps)
        decision = live.replace_now(engine.optimizer_step, "benchmark")
        times["ilp"] += timed_steps(args.steps)
        engine.set_expert_placements(contiguous)
    if world.rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        print(decision["text"])
        print(f"\n| placement | median step ms | max/mean rank load | ratio to contiguous |")
        print("|---|---|---|---|")
        old = max(l["old_imbalance"] for l in decision["layers"])
        new = max(l["new_imbalance"] if l["adopted"] else l["old_imbalance"] for l in decision["layers"])
        print(f"| contiguous | {1e3 * med['contiguous']:.1f} | {old:.3f} | 1.000 |")
        print(f"| ILP (GLPK) | {1e3 * med['ilp']:.1f} | {new:.3f} | {med['ilp'] / med['contiguous']:.3f} |")
        print(f"\nmigration per switch: {decision['bytes_migrated'] / 2**20:.2f} MiB, {decision['experts_moved']} "
              f"experts, {decision['migrate_seconds']:.3f} s; solve {decision['solve_seconds']:.3f} s "
              f"({len(decision['layers'])} layers); {args.rounds} rounds of {args.steps} steps each, world "
              f"{world.size}, {args.experts} experts, hot {args.hot} (+{args.skew} selection bias)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--hot", type=int, default=4)
    p.add_argument("--skew", type=float, default=3.0)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from conftest import mpirun_command

    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = mpirun_command(args.np, str(Path(__file__).resolve()), "--worker",
                         *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("np", "worker")])
    sys.exit(subprocess.run(cmd, env=env, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
