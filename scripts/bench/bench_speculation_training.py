"""Benchmark: speculation in real training runs (docs/speculation.md, issue I).

    python scripts/bench/bench_speculation_training.py [--steps 40] [--np 4]
        [--resume runs/demo/checkpoints/step_00000200] [--out runs/speculation]

Trains the main job's model (configs/demo.yaml: 4 MoE blocks, 8 experts top-2 + 1 shared)
with expert_parallel = --np on the bundled corpus, three times on the same batches:

  exact      speculation.capacity=false: counts exchanged, then the payload
  history    speculation.capacity=true, routes=false: capacities from the block's previous dispatch
  routes     speculation.capacity=true, routes=true: capacities from the routes the block's
             router predicts from the block's input, exchanged before the attention

With --resume the runs continue a trained checkpoint for --steps more steps (the routing of a
trained model); without, they start from scratch. The three runs must give the same losses
(checked: bitwise, as printed to the metrics file). Reported per mode: tokens/s as a ratio to
exact (same invocation; the machine is shared, so ratios only), and from each run's
speculation.json, over all ranks: the share of dispatches that needed a second round, per
MoE block; collectives and host synchronisations before the payload per dispatch; bytes per
dispatch and the padding share; rows deduplicated (slots - rows over slots). Runs already
complete in --out are reused (delete one to measure it again).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_quality import train  # noqa: E402

MODES = {
    "exact": ["speculation.capacity=false", "speculation.routes=false"],
    "history": ["speculation.capacity=true", "speculation.routes=false"],
    "routes": ["speculation.capacity=true", "speculation.routes=true"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--resume", default=None, help="a trained checkpoint to continue (e.g. the main job's)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "speculation")
    args = p.parse_args()

    start = 0
    common = [f"parallel.expert_parallel={args.np}", "train.log_every=5", "checkpoint.save_every=0"]
    if args.resume:
        from switchyard import checkpoint

        start = int(checkpoint.read_metadata(args.resume)["trainer"]["step"])
        common.append(f"checkpoint.resume={Path(args.resume).resolve()}")
    steps = start + args.steps
    results = {}
    for mode, keys in MODES.items():
        metrics, _ = train("demo", args.np, steps, args.out, run=mode,
                           extra=[*common, *keys, f"train.eval_every={steps}"], reuse=True)
        spec = json.loads((args.out / mode / "speculation.json").read_text())
        results[mode] = (metrics, spec)

    losses = {m: [v for v in r[0]["loss"] if v is not None] for m, r in results.items()}
    same = all(losses[m] == losses["exact"] for m in losses)
    print(f"\nlosses of the three runs equal at every logged step: {same}")
    if not same:
        for m, v in losses.items():
            print(f"  {m}: {v}")
        sys.exit(1)

    def tok_s(m):  # median over the logged windows, the first (warm-up) dropped
        return statistics.median(v for v in results[m][0]["tokens_per_s"][1:] if v is not None)

    blocks = len(results["exact"][1]["layers"])
    print(f"\n{args.steps} steps{' from ' + args.resume if args.resume else ' from scratch'}, "
          f"{args.np} ranks (expert_parallel {args.np}), {blocks} MoE blocks; per rank and dispatch (forward):\n")
    head = " | ".join(f"block {b}" for b in range(blocks))
    print(f"| mode | tokens/s vs exact | collectives | host syncs before payload | KiB sent | padding | "
          f"rows dedup | 2nd round: {head} |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * blocks)
    for mode, (_, spec) in results.items():
        tot = {k: sum(layer[k] for layer in spec["layers"]) for k in spec["layers"][0]}
        n = tot["dispatches"]
        rounds = " | ".join(f"{100 * l['second_rounds'] / max(l['dispatches'], 1):.0f}%" for l in spec["layers"])
        print(f"| {mode} | {tok_s(mode) / tok_s('exact'):.3f} | {tot['collectives'] / n:.2f} | "
              f"{tot['host_syncs_before_payload'] / n:.2f} | {tot['bytes_moved'] / n / 1024:.1f} | "
              f"{tot['padding_bytes'] / max(tot['bytes_moved'], 1):.1%} | "
              f"{1 - tot['remote_rows_sent'] / max(tot['remote_slots_sent'], 1):.1%} | {rounds} |")
    r = results["routes"][1]["layers"]
    print(f"\nroutes mode: {sum(l['route_predicted_dispatches'] for l in r)} of "
          f"{sum(l['dispatches'] for l in r)} rank-dispatches sized from predicted routes; "
          f"{sum(l['prediction_collectives'] for l in r)} count exchanges started before the attention")


if __name__ == "__main__":
    main()
