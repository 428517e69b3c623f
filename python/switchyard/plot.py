"""Plots of a training run, drawn from the files in its run directory.

    python -m switchyard.plot runs/demo            # writes runs/demo/loss.png, expert_load.png

``loss.png``: training loss (and validation loss where evaluated) against step, with the
corpus's unigram entropy as a reference line when ``run.json`` records it -- a model that
learns nothing beyond token frequencies sits on that line. ``expert_load.png``: one heatmap
per MoE layer, expert against step, coloured by the expert's share of the routed slots
relative to the balanced share (1 = balanced, 2 = twice its share).
"""

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List

from .training.metrics import read_metrics


def _matplotlib():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - matplotlib is in requirements.txt
        raise ImportError("switchyard.plot needs matplotlib; run scripts/install-deps") from e
    matplotlib.use("Agg")  # files only; no display on a training node
    import matplotlib.pyplot as plt

    return plt


def plot_loss(run_dir: Path) -> Path:
    plt = _matplotlib()
    m = read_metrics(run_dir)
    facts = _facts(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    train = [(s, v) for s, v in zip(m["step"], m["loss"]) if v is not None]
    val = [(s, v) for s, v in zip(m["step"], m["val_loss"]) if v is not None]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.4)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.4, ms=4)
    if facts.get("unigram_entropy_nats") is not None:
        ax.axhline(facts["unigram_entropy_nats"], ls="--", c="gray", lw=1,
                   label=f"unigram entropy ({facts['unigram_entropy_nats']:.2f} nats)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(facts.get("title", run_dir.name))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _read_loads(run_dir: Path) -> Dict[int, List[List[float]]]:
    """layer -> rows [step, share_0, ..., share_{E-1}]."""
    path = run_dir / "expert_load.csv"
    layers: Dict[int, List[List[float]]] = {}
    if not path.exists():
        return layers
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            layers.setdefault(int(row[1]), []).append([float(row[0])] + [float(v) for v in row[2:]])
    return layers


def plot_expert_load(run_dir: Path):
    layers = _read_loads(run_dir)
    if not layers:
        return None  # a dense model: nothing to show
    plt = _matplotlib()
    n = len(layers)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.2 + 1.6 * n), squeeze=False, sharex=True)
    image = None
    for ax, (layer, rows) in zip(axes[:, 0], sorted(layers.items())):
        steps = [r[0] for r in rows]
        num_experts = len(rows[0]) - 1
        relative = [[share * num_experts for share in r[1:]] for r in rows]  # 1 = balanced
        grid = list(map(list, zip(*relative)))  # [expert][time]
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=2.0,
                          extent=(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1,
                                  -0.5, num_experts - 0.5), interpolation="nearest")
        ax.set_ylabel(f"MoE layer {layer}\nexpert")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="load / balanced load")
    fig.suptitle("expert load over training")
    out = run_dir / "expert_load.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _facts(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def plot_run(run_dir) -> List[Path]:
    """Draws every plot of the run directory; returns the files written."""
    run_dir = Path(run_dir)
    written = [plot_loss(run_dir)]
    heat = plot_expert_load(run_dir)
    if heat is not None:
        written.append(heat)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (train.run_dir of the run)")
    args = parser.parse_args(argv)
    for path in plot_run(args.run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
