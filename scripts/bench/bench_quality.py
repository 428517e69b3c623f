"""Benchmark: model quality of the MoE demo against its FLOP-matched dense baseline.

    python scripts/bench/bench_quality.py [--steps 200] [--np 2] [--out runs/quality] [--reuse]

Trains configs/demo.yaml (8 experts top-2 + 1 shared) and configs/demo_dense.yaml (dense
FFN of the same active size) on the same data, steps and schedule, each under mpirun, then
draws both curves in one plot (OUT/quality.png) and prints a markdown table of the final
train and validation losses. Loss, not time, is the measure, so a busy machine does not
change the result -- only how long it takes.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from switchyard.training.metrics import read_metrics  # noqa: E402

RUNS = (("MoE (8 experts, top-2 + 1 shared)", "demo"), ("dense, FLOP-matched", "demo_dense"))


def train(name, np, steps, out, run=None, extra=(), reuse=False):
    """Trains configs/<name>.yaml for `steps` steps on `np` ranks into out/<run or name>;
    returns its metrics columns and run.json. `extra`: more --set overrides. `reuse`: keep a
    run directory whose metrics already reach `steps` (a long benchmark resumed)."""
    run_dir = out / (run or name)
    if reuse and (run_dir / "run.json").exists() and (run_dir / "metrics.csv").exists():
        done = read_metrics(run_dir)["step"]
        if done and done[-1] == steps:
            print(f"reusing {run_dir} ({steps} steps)", flush=True)
            return read_metrics(run_dir), json.loads((run_dir / "run.json").read_text())
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += ["-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS", sys.executable, "-m", "switchyard.train",
            "--config", f"configs/{name}.yaml", "--set", f"train.steps={steps}",
            "--set", f"train.run_dir={run_dir}", "--set", f"train.eval_every={max(1, steps // 8)}"]
    for kv in extra:
        cmd += ["--set", kv]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return read_metrics(run_dir), json.loads((run_dir / "run.json").read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--reuse", action="store_true", help="keep runs in --out that already reached --steps")
    args = p.parse_args()
    results = [(label, *train(name, args.np, args.steps, args.out, reuse=args.reuse)) for label, name in RUNS]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = []
    for (label, m, facts), color in zip(results, ("C0", "C1")):
        train_pts = [(s, v) for s, v in zip(m["step"], m["loss"]) if v is not None]
        val_pts = [(s, v) for s, v in zip(m["step"], m["val_loss"]) if v is not None]
        ax.plot(*zip(*train_pts), color=color, alpha=0.45, lw=1, label=f"{label}: train")
        ax.plot(*zip(*val_pts), "o-", color=color, lw=1.6, ms=4, label=f"{label}: validation")
        rows.append((label, facts["parameters"], train_pts[-1][1], val_pts[-1][1]))
    entropy = results[0][2]["unigram_entropy_nats"]
    ax.axhline(entropy, ls="--", c="gray", lw=1, label=f"unigram entropy ({entropy:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"MoE vs FLOP-matched dense, {args.np} ranks, {args.steps} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "quality.png", dpi=120)

    print("\n| model | parameters | final train loss | final validation loss |")
    print("|---|---:|---:|---:|")
    for label, params, tr, va in rows:
        print(f"| {label} | {params / 1e6:.2f} M | {tr:.4f} | {va:.4f} |")
    print(f"\nvalidation loss, dense / MoE: {rows[1][3] / rows[0][3]:.3f}; plot: {args.out / 'quality.png'}")


if __name__ == "__main__":
    main()
