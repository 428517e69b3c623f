"""Benchmark: does an upcycled MoE beat the dense model it came from, for the same extra steps?

    python scripts/bench/bench_upcycling.py [--dense-steps 200] [--extra-steps 200] [--np 2]
        [--target configs/upcycle_moe.yaml --method sparse --router-std 0.02]

1. Trains configs/upcycle_dense.yaml (dense FFN 1024) for --dense-steps.
2. From its checkpoint, for --extra-steps more, each with a fresh optimizer and the same
   schedule:
   - continued dense: the dense weights, trained on;
   - upcycled MoE: --method upcycling into --target (default: 8 copies of the dense FFN,
     top-1: the same FLOPs per token), trained on;
   - MoE from scratch: --target from random weights.
Prints a markdown table (loss at the first evaluation and at the end) and draws the three
validation curves in OUT/upcycling_<target>.png. Runs already complete in OUT are reused
(the dense ones are shared by every target). Losses, not times, so a busy machine changes
only how long it takes.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_quality import train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense-steps", type=int, default=200)
    p.add_argument("--extra-steps", type=int, default=200)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "upcycling")
    p.add_argument("--target", default="configs/upcycle_moe.yaml")
    p.add_argument("--method", default="sparse", choices=["sparse", "drop", "fine_grained"])
    p.add_argument("--router-std", type=float, default=0.02)
    p.add_argument("--shared-fraction", type=float, default=None,
                   help="with a shared expert in --target: the share of the output it carries (upcycle --shared-fraction)")
    p.add_argument("--no-scratch", action="store_true", help="skip the MoE trained from random weights")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the extra-step runs (all three alike), e.g. train.lr=3e-4")
    args = p.parse_args()
    tag = Path(args.target).stem
    out = args.out
    eval_every = f"train.eval_every={max(1, args.extra_steps // 8)}"

    import os

    from switchyard import checkpoint

    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    train("upcycle_dense", args.np, args.dense_steps, out, run="dense_source", reuse=True)
    source = checkpoint.latest(out / "dense_source" / "checkpoints")
    # The dense weights as a step-0 checkpoint: the continued dense run starts afresh too.
    if checkpoint.latest(out / "dense_init") is None:
        subprocess.run([sys.executable, "-c",
                        "import sys, switchyard; from switchyard import _C, checkpoint; switchyard.init();"
                        "c = checkpoint.read_config(sys.argv[1]);"
                        "_C.checkpoint.write_initial_checkpoint(checkpoint.read_full_state(sys.argv[1]), c, sys.argv[2], {})",
                        source, str(out / "dense_init")], check=True, cwd=ROOT, env=env)
    init = out / f"upcycled_init_{tag}"
    subprocess.run([sys.executable, "-m", "switchyard.upcycle", "--from", source, "--config", args.target,
                    "--method", args.method, "--router-std", str(args.router_std), "--out", str(init),
                    *([] if args.shared_fraction is None else ["--shared-fraction", str(args.shared_fraction)])],
                   check=True, cwd=ROOT, env=env)
    runs = [
        ("continued dense", "upcycle_dense", "continued_dense", [f"checkpoint.resume={out / 'dense_init'}"]),
        (f"upcycled MoE ({args.method}, {tag})", tag, f"upcycled_{tag}", [f"checkpoint.resume={init}"]),
        (f"MoE from scratch ({tag})", tag, f"scratch_{tag}", []),
    ][: 2 if args.no_scratch else 3]
    results = [(label, *train(name, args.np, args.extra_steps, out, run=run,
                              extra=[eval_every, *args.overrides, *extra], reuse=True))
               for label, name, run, extra in runs]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = []
    for (label, m, facts), color in zip(results, ("C1", "C0", "C2")):  # dense, upcycled, scratch
        val = [(s, v) for s, v in zip(m["step"], m["val_loss"]) if v is not None]
        first_train = next(v for v in m["loss"] if v is not None)
        ax.plot(*zip(*val), "o-", color=color, lw=1.6, ms=4, label=label)
        rows.append((label, facts["parameters"], first_train, val[0][1], val[-1][1]))
    ax.set_xlabel(f"extra optimizer steps (after {args.dense_steps} dense steps)")
    ax.set_ylabel("validation cross-entropy (nats/token)")
    ax.set_title("Upcycled MoE vs continued dense vs MoE from scratch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"upcycling_{tag}.png", dpi=120)

    print(f"\n| run | parameters | train loss at the first log | first validation loss | final validation loss |")
    print("|---|---:|---:|---:|---:|")
    for label, params, first, v0, v1 in rows:
        print(f"| {label} | {params / 1e6:.2f} M | {first:.4f} | {v0:.4f} | {v1:.4f} |")
    vs_scratch = f"upcycled / scratch: {rows[1][4] / rows[2][4]:.4f}; " if len(rows) > 2 else ""
    print(f"\nfinal validation loss, upcycled / continued dense: {rows[1][4] / rows[0][4]:.4f}; "
          f"{vs_scratch}plot: {out / f'upcycling_{tag}.png'}")


if __name__ == "__main__":
    main()
