"""Projected saving of speculative capacity and routing at 8-64 GPUs (docs/speculation.md),
with the placement cost model of issue H (csrc/switchyard/placement/cost_model.h, the public
NCCL H100 figures of docs/placement.md) and this project's measured second-round rates.

    python scripts/bench/project_speculation.py [--second-round 0.63] [--overflow 0.013]
        [--second-round-routes 0.19] [--overflow-routes 0.003] [--t-sync-us 20] [--margin 0.1]

Per MoE layer and forward pass of one GPU (uniform routing, contiguous placement; 256 experts,
top-8, hidden 4096, expert FFN 2048, 8192 tokens per GPU, bf16, 8 GPUs per node -- the
instance of bench_placement.py's projection), every term from project_layer_time:

  saved   = 3 A + t_sync        the count exchange and the ids / weights all-to-alls (A: the
                                latency of one all-to-all over R - 1 peers), and the host's
                                device-to-host read before the payload
  paid    = P(margin)           a2a time of the padding (margin x the rows) and one header row per peer
          + p (A_m + O)         second rounds: probability p, latency to the overflowing peers,
                                overflow rows' bytes (fraction --overflow of the rows)
          + t_router            speculative routing only: the router matmul run twice

t_sync is an assumption (no GPU was lent to this project's sessions to measure it). p and
the overflow fraction default to the CPU measurements on the main job's model
(bench_speculation_training.py); at scale they depend on the rows per pair and on how fast
the routing drifts. Prints the layer time, then the net
saving per layer as microseconds and as a fraction of the layer's forward time.
"""

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_placement import (D_FF, DTYPE_BYTES, HIDDEN, IB_ALPHA_S, IB_BETA_BPS, NVLINK_ALPHA_S,  # noqa: E402
                             NVLINK_BETA_BPS, PROJ_EXPERTS, RANK_FLOPS, TOKENS_PER_GPU, TOP_K)


def a2a_seconds(R, rows_per_peer, model):
    """One all-to-all in which every rank sends rows_per_peer rows to every other rank."""
    from switchyard._C import placement as cp

    traffic = [0.0 if s == r else rows_per_peer for s in range(R) for r in range(R)]
    return cp.project_layer_time([0.0] * R, traffic, model)["all_to_all_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--second-round", type=float, default=0.63, help="share of dispatches with a second round")
    p.add_argument("--second-round-routes", type=float, default=0.19,
                   help="the same with capacities from predicted routes")
    p.add_argument("--overflow", type=float, default=0.013, help="overflow rows as a share of the rows sent")
    p.add_argument("--overflow-routes", type=float, default=0.003, help="the same with predicted routes")
    p.add_argument("--t-sync-us", type=float, default=20.0, help="device-to-host read + launch bubble (assumed)")
    p.add_argument("--margin", type=float, default=0.1, help="the capacity margin the rates were measured at")
    args = p.parse_args()

    from switchyard import placement
    from switchyard._C import placement as cp

    model = placement.cost_model(hidden_size=HIDDEN, dtype_bytes=DTYPE_BYTES, flops_per_token=6.0 * HIDDEN * D_FF,
                                 rank_flops=RANK_FLOPS, alpha_intra_s=NVLINK_ALPHA_S, beta_intra_Bps=NVLINK_BETA_BPS,
                                 alpha_inter_s=IB_ALPHA_S, beta_inter_Bps=IB_BETA_BPS, ranks_per_node=8)
    # A row holds the token plus K ids (8 B) and K weights (4 B): in token units of hidden * dtype.
    row_tokens = 1.0 + TOP_K * 12 / (HIDDEN * DTYPE_BYTES)
    router_s = 2.0 * TOKENS_PER_GPU * HIDDEN * PROJ_EXPERTS / RANK_FLOPS
    t_sync = args.t_sync_us * 1e-6

    m = args.margin
    print(f"| GPUs | rows per peer | layer fwd (compute + 2 a2a) | A: latency of one a2a | history, margin {m} "
          f"| routes, margin {m} | margin 0.02, a second round every time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for R in (8, 16, 32, 64):
        # Uniform top-K over E experts on R ranks: a token needs rank r with probability
        # 1 - C(E - E/R, K) / C(E, K) (one deduplicated row per (token, rank)).
        per_rank = PROJ_EXPERTS // R
        hit = 1.0 - math.comb(PROJ_EXPERTS - per_rank, TOP_K) / math.comb(PROJ_EXPERTS, TOP_K)
        rows = TOKENS_PER_GPU * hit * row_tokens
        load = [TOKENS_PER_GPU * TOP_K] * R
        traffic = [0.0 if s == r else rows for s in range(R) for r in range(R)]
        layer = cp.project_layer_time(load, traffic, model)["total_s"]
        A = a2a_seconds(R, 1e-9, model)
        payload = a2a_seconds(R, rows, model) - A

        def net(margin, p_second, extra=0.0, overflow=args.overflow):
            pad = a2a_seconds(R, rows * (1 + margin) + row_tokens, model) - a2a_seconds(R, rows, model)
            second = p_second * (A / 2 + overflow * payload)  # to about half the peers
            return 3 * A + t_sync - pad - second - extra

        cells = [net(m, args.second_round), net(m, args.second_round_routes, router_s, args.overflow_routes), net(0.02, 1.0)]
        print(f"| {R} | {rows:.0f} | {layer * 1e3:.2f} ms | {A * 1e6:.0f} us | "
              + " | ".join(f"{c * 1e6:+.0f} us ({c / layer:+.2%})" for c in cells) + " |")
    print(f"\nt_sync = {args.t_sync_us:.0f} us (assumed); second round in {args.second_round:.0%} of dispatches "
          f"with {args.overflow:.1%} of the rows (history), {args.second_round_routes:.0%} with "
          f"{args.overflow_routes:.1%} (routes); router matmul {router_s * 1e6:.0f} us at "
          f"{RANK_FLOPS / 1e12:.0f} TFLOP/s. Backward passes are unchanged (the same 3 all-to-alls).")


if __name__ == "__main__":
    main()
