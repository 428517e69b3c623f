"""Sharded training engine on CPU (MPI): step time, per-rank dense memory and bytes
communicated against the rank count R, in one run per R.

For each R in --ranks the driver launches `mpirun -np R` of this script (--worker). Each
worker trains a ToyMoEStack (fp32, expert_parallel = 1 so the dense part dominates and
every rank holds every expert) with parallel.shard_dense = true for --steps steps after
--warmup, and reports (rank 0; times are medians of the slowest rank):

  step_ms                   wall time of ShardedEngine.step
  persistent_dense_bytes    shards of master weights, gradients and AdamW state (engine accounting)
  unsharded_dense_bytes     the same state without sharding; the ideal per rank is this / R
  allocator_peak_bytes      the engine's counting allocator: every dense buffer it allocated
  bytes_dense               all-gathers received + reduce-scatters sent per step (engine count)
  bytes_analytic            ZeRO-3: (R-1)/R * params * (2 x 4 B gathered + 4 B reduced) per micro-batch
  replicated_*              the baseline, in the same process, steps alternating: the same engine
                            with parallel.shard_dense = false (replicated dense state, all-reduce)

Weak scaling: every rank runs one micro-batch of --batch x --seq tokens, so the global batch
grows with R; on the 2-core development VM, R = 4 oversubscribes the cores.

Writes a markdown table (--markdown FILE) and a PNG (--plot FILE, when matplotlib is
installed). Usage:
  python scripts/bench/bench_sharding.py --ranks 1 2 4 --markdown /tmp/s.md --plot docs/img/sharding.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import torch


def worker(args) -> None:
    import switchyard
    import switchyard.comm as comm
    from switchyard.config import loads_config
    from switchyard.nn import MoELayerOptions
    from switchyard.sharding import ShardedEngine, ToyMoEStack

    switchyard.init()
    world = comm.world()
    torch.manual_seed(0)
    moe = MoELayerOptions()
    moe.d_model, moe.num_experts, moe.top_k, moe.ffn_hidden = args.d_model, 4, 2, args.d_model
    engines = []
    for shard in ("true", "false"):  # the baseline: the same engine with dense state replicated
        torch.manual_seed(0)
        model = ToyMoEStack(args.vocab, args.blocks, 4 * args.d_model, moe)
        cfg = loads_config("", overrides=[f"parallel.shard_dense={shard}", "train.grad_accum=1",
                                          "train.precision=fp32"])
        engines.append(ShardedEngine(model, cfg, world))
    engine, replicated = engines
    g = torch.Generator().manual_seed(world.rank)

    def batch():
        return [(torch.randint(args.vocab, (args.batch, args.seq), generator=g),
                 torch.randint(args.vocab, (args.batch, args.seq), generator=g))]

    # The two engines alternate within every iteration, so load changes hit both alike.
    times, base_times, results = [], [], []
    for i in range(args.warmup + args.steps):
        b = batch()
        for e, sink in ((engine, times), (replicated, base_times)):
            world.barrier()
            t0 = time.perf_counter()
            out = e.step(b, 1e-3)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                sink.append(dt)
                if e is engine:
                    results.append(out)
    t = torch.tensor([statistics.median(times), statistics.median(base_times)], dtype=torch.float64)
    world.all_reduce(t, "max")
    mem = engine.memory_report()
    base_mem = replicated.memory_report()
    last = results[-1]
    if world.rank == 0:
        print("RESULT " + json.dumps({
            "R": world.size,
            "step_ms": t[0].item() * 1e3,
            "replicated_step_ms": t[1].item() * 1e3,
            "replicated_dense_bytes": base_mem["persistent_dense_bytes"],
            "dense_params": mem["dense_numel"],
            "persistent_dense_bytes": mem["persistent_dense_bytes"],
            "unsharded_dense_bytes": mem["unsharded_dense_bytes"],
            "largest_unit_bytes": mem["largest_unit_bytes"],
            "peak_transient_bytes": mem["peak_transient_bytes"],
            "allocator_peak_bytes": mem["allocator_peak_bytes"],
            "expert_bytes": mem["expert_bytes"],
            "bytes_dense": last["bytes_gathered"] + last["bytes_reduced"],
            "bytes_analytic": engine.analytic_dense_bytes_per_micro_batch(),
            "max_units_gathered": last["max_units_gathered"],
            "forward_fraction": statistics.median(r["forward_seconds"] / r["seconds"] for r in results),
        }), flush=True)


def mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def driver(args) -> None:
    rows = []
    for R in args.ranks:
        cmd = ["mpirun", "-np", str(R), "--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        cmd += [sys.executable, __file__, "--worker"] + [f"--{k}={getattr(args, k)}" for k in
                                                        ("vocab", "d_model", "blocks", "batch", "seq", "steps", "warmup")]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            sys.exit(f"R={R} failed:\n{out.stdout}\n{out.stderr}")
        rows.append(json.loads(line[0][7:]))
    base = rows[0]
    md = ["| R | step ms sharded | step ms replicated | sharded / replicated | dense state / rank MiB | "
          "replicated MiB | ideal unsharded/R MiB | ratio | allocator peak MiB | "
          "bytes / step MiB | analytic MiB | engine / analytic | forward share of step |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ideal = r["unsharded_dense_bytes"] / r["R"]
        ratio = r["bytes_dense"] / r["bytes_analytic"] if r["bytes_analytic"] else float("nan")
        md.append(f"| {r['R']} | {r['step_ms']:.1f} | {r['replicated_step_ms']:.1f} | "
                  f"{r['step_ms'] / r['replicated_step_ms']:.2f} | {mib(r['persistent_dense_bytes'])} | "
                  f"{mib(r['replicated_dense_bytes'])} | {mib(ideal)} | "
                  f"{r['persistent_dense_bytes'] / ideal:.4f} | {mib(r['allocator_peak_bytes'])} | "
                  f"{mib(r['bytes_dense'])} | {mib(r['bytes_analytic'])} | "
                  + (f"{ratio:.4f}" if r["bytes_analytic"] else "— (no traffic)")
                  + f" | {r['forward_fraction']:.2f} |")
    text = "\n".join(md)
    print(f"model: {base['dense_params']} dense parameters, largest unit {mib(base['largest_unit_bytes'])} MiB "
          f"(params + grad buffer), experts {mib(base['expert_bytes'])} MiB per rank")
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        Rs = [r["R"] for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        a.plot(Rs, [r["persistent_dense_bytes"] / 2**20 for r in rows], "o-", label="engine")
        a.plot(Rs, [r["unsharded_dense_bytes"] / r["R"] / 2**20 for r in rows], "k--", label="unsharded / R")
        a.set_xlabel("ranks R"); a.set_ylabel("dense state per rank (MiB)"); a.legend(); a.set_xticks(Rs)
        b.plot(Rs, [r["step_ms"] for r in rows], "o-", label="sharded")
        b.plot(Rs, [r["replicated_step_ms"] for r in rows], "s--", label="replicated (shard_dense=false)")
        b.legend()
        b.set_xlabel("ranks R"); b.set_ylabel("step time (ms, 2-core CPU)"); b.set_xticks(Rs)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--markdown")
    p.add_argument("--plot")
    args = p.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
