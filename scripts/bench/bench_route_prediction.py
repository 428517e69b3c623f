"""Cross-layer route prediction on a trained model (issue I item 2, docs/speculation.md):
how often an MoE block's router, applied to the block's input with the block's attention
skipped (Pre-gated MoE), picks the experts -- and the expert-parallel ranks -- that the block
then really routes to.

Loads a checkpoint (any rank count; e.g. the main job's: scripts/demo writes
runs/demo/checkpoints/step_00000200), runs --batches validation batches of its own data
config through MoETransformer.predict_routes (eval mode, one process), and prints per
predicted block:

  expert set      fraction of tokens whose top-k expert set was predicted exactly
  expert recall   fraction of (token, expert) choices predicted
  rank set @R     fraction of tokens whose set of destination ranks was predicted exactly,
                  under the contiguous placement of E experts on R ranks -- what a dispatcher
                  needs to pre-schedule the all-to-all (counts and buffers)
  chance          the expert recall of a uniformly random guess (K / E)

Usage:
  python scripts/bench/bench_route_prediction.py CHECKPOINT [--batches 8] [--ranks 2 4 8]
"""

from __future__ import annotations

import argparse

import torch


def rank_sets(ids_TK: torch.Tensor, num_experts: int, ranks: int) -> torch.Tensor:
    """[T, R] bool: the ranks holding each token's experts, contiguous placement."""
    per_rank = -(-num_experts // ranks)
    mask = torch.zeros(ids_TK.shape[0], ranks, dtype=torch.bool)
    mask.scatter_(1, ids_TK // per_rank, True)
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()

    import switchyard
    from switchyard import checkpoint
    from switchyard.data import build_dataset

    switchyard.init()
    cfg = checkpoint.read_config(args.checkpoint)
    model = checkpoint.load_model(args.checkpoint)
    _, val, _ = build_dataset(cfg, 0, 1)
    E, K = cfg.moe.num_experts, cfg.moe.top_k
    totals: dict = {}
    for _ in range(args.batches):
        input_ids, _targets = val.next_batch(args.batch_size)
        for p in model.predict_routes(input_ids):
            pred, real = p["predicted"], p["actual"]
            t = totals.setdefault(p["block"], {"tokens": 0, "set": 0, "recall": 0, **{r: 0 for r in args.ranks}})
            t["tokens"] += real.shape[0]
            hits = (pred.unsqueeze(2) == real.unsqueeze(1)).any(1)  # [T, K]: real choice predicted
            t["set"] += int(hits.all(1).sum())
            t["recall"] += float(hits.float().mean(1).sum())
            for r in args.ranks:
                t[r] += int((rank_sets(pred, E, r) == rank_sets(real, E, r)).all(1).sum())
    header = "| block | tokens | expert set | expert recall | " + " | ".join(f"rank set @{r}" for r in args.ranks)
    print(f"{args.checkpoint}: {E} experts, top-{K}, {args.batches} x {args.batch_size} validation sequences\n")
    print(header + " |")
    print("|---" * (4 + len(args.ranks)) + "|")
    for block, t in sorted(totals.items()):
        n = t["tokens"]
        print(f"| {block} | {n} | {t['set'] / n:.3f} | {t['recall'] / n:.3f} | "
              + " | ".join(f"{t[r] / n:.3f}" for r in args.ranks) + " |")
    print(f"\nchance: expert recall {K / E:.3f} (a uniformly random top-{K} guess)")


if __name__ == "__main__":
    main()
