"""Expert placement on synthetic skew: contiguous vs greedy (LPT) vs the GLPK MILP, with and
without replicas of hot experts, and the projected MoE-layer time at 8-64 GPUs.

Loads follow Zipf(alpha) over the experts (expert ids shuffled, so hot experts are not all in
one contiguous block by construction); each expert's tokens come from the ranks in random
proportions (u^3, normalised: a few dominant source ranks), giving the traffic matrix.
Every rank has slots = 1.25 * E / R (25% memory headroom); 8 ranks per node.

Table 1 (solver): crossing nodes costs node_factor = 4, traffic_weight = 1 / R (sends run in
parallel on all ranks, so the total cross-rank volume is compared with one rank's share); the
replica rows allow replica_budget = R extra copies (one per rank on average).

Table 2 (projection, docs/placement.md "Cost model"): E = 256 experts, top-8 routing of 8192
tokens per GPU, hidden 4096 in bf16, SwiGLU experts with d_ff = 2048 (6 * 4096 * 2048 FLOPs per
routed token in the forward pass), 400 TFLOP/s sustained per GPU, NCCL alpha/beta for H100
NVLink inside a node and 400 Gb/s InfiniBand across nodes (public figures, docs/placement.md).
The solver's traffic weights come from the same model: one token sent inside a node costs
2 * bytes / beta_intra of all-to-all time (dispatch and combine), expressed in straggler
tokens and divided by R; node_factor = beta_intra / beta_inter. Usage:

  python scripts/bench/bench_placement.py [--time-limit 1.0] [--seed 0] [--only solver|projection|trace]
                                         [--trace RUN/routing.trace ...]

--trace adds instances from routing traces recorded by real training runs
(placement.trace_path, docs/routing_trace.md): one per MoE layer, per-step loads and traffic,
slots = ceil(E / R) as at runtime.

Prints markdown tables; ratios are to contiguous placement of the same instance.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from switchyard import placement

# Public NCCL figures (docs/placement.md, "Cost model"): per-peer latency and per-GPU bandwidth.
NVLINK_ALPHA_S, NVLINK_BETA_BPS = 3.4e-6, 320e9
IB_ALPHA_S, IB_BETA_BPS = 9.6e-6, 45e9
HIDDEN, D_FF, DTYPE_BYTES, RANK_FLOPS = 4096, 2048, 2, 400e12
TOKENS_PER_GPU, TOP_K, PROJ_EXPERTS = 8192, 8, 256


def instance(E, R, alpha, seed, tokens_per_expert=4096):
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** alpha for k in range(E)]
    rng.shuffle(weights)
    total = tokens_per_expert * E
    loads = [total * w / sum(weights) for w in weights]
    traffic = [[0.0] * E for _ in range(R)]
    for e in range(E):
        share = [rng.random() ** 3 for _ in range(R)]
        norm = sum(share)
        for s in range(R):
            traffic[s][e] = loads[e] * share[s] / norm
    return loads, traffic


def table_header() -> None:
    print("| instance | terms | method | max/mean load | cross-rank tokens | objective | obj / contiguous "
          "| copies | solve s | gap | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")


def instance_rows(label, loads, traffic, R, slots, args, ranks_per_node=8) -> None:
    """One table row per method for one instance, with and without the traffic term."""
    E = len(loads)
    for terms in ("load", "load+traffic"):
        kw = dict(ranks_per_node=ranks_per_node, node_factor=4.0, traffic_weight=1.0 / R)
        t = traffic if terms == "load+traffic" else None

        def cost(hosts, shares):
            return placement.evaluate_replicated(hosts, shares, loads, R, slots, traffic, **kw)

        rows = [("contiguous", cost(*placement.single_host(placement.contiguous(loads, R, slots))), None, E)]
        g = placement.greedy(loads, R, slots, t, **kw)
        rows.append(("greedy (LPT)", cost(*placement.single_host(g)), None, E))
        r = placement.solve(loads, R, slots, t, time_limit=args.time_limit, **kw)
        rows.append(("ILP (GLPK)", cost(*placement.single_host(r["placement"])), r, E))
        if slots * R > E:  # replicas need free slots
            gh, gs = placement.greedy_replicated(loads, R, slots, t, replica_budget=R, **kw)
            rows.append((f"greedy + replicas ({R})", cost(gh, gs), None, sum(len(h) for h in gh)))
            rr = placement.solve_replicated(loads, R, slots, t, replica_budget=R, time_limit=args.time_limit, **kw)
            rows.append((f"ILP + replicas ({R})", cost(rr["hosts"], rr["shares"]), rr, rr["copies"]))
        obj0 = None
        for name, c, res, copies in rows:
            # The objective of the instance solved (without traffic: max load only).
            obj = c["max_load"] + (c["traffic_cost"] if t is not None else 0.0)
            obj0 = obj if obj0 is None else obj0
            solve = f"{res['seconds']:.3f}" if res else "-"
            gap = f"{100 * res['gap']:.2f}%" if res else "-"
            status = res["status"] if res else "-"
            print(f"| {label} | {terms} | {name} | {c['imbalance']:.3f} | "
                  f"{c['cross_rank_tokens'] / sum(loads):.3f} | {obj:.0f} | {obj / obj0:.3f} | {copies} | "
                  f"{solve} | {gap} | {status} |")


def grouping_table(args) -> None:
    """Speculative expert grouping (issue I, docs/speculation.md): a placement that puts
    co-activated experts on one rank lets the dispatcher's deduplication send a token there
    once. For top-2 routing the count is exact: a token whose two experts share a rank is one
    (token, rank) row instead of two, so rows = 2 T - (co-activated pairs on one rank)."""
    from switchyard import trace as routing_trace

    print("| trace layer | placement | max/mean load | rows per token (top-2) | rows / contiguous | solve s |")
    print("|---|---|---|---|---|---|")
    for path in args.trace:
        stats = routing_trace.load(path).statistics
        for layer in range(stats.num_layers):
            info = stats.layer_info[layer] if layer < len(stats.layer_info) else {}
            if info.get("top_k", 2) != 2:
                continue
            p = stats.placement_problem(layer)
            loads, coact, R = list(p.load), list(p.coactivation), stats.num_source_ranks
            E = len(loads)
            tokens = sum(loads) / 2  # per step; each token has two kept slots
            slots = -(-E // R)
            # Rewarding a shared rank by one straggler token per row saved (x2: dispatch and
            # combine), divided by R like the traffic term: sends run in parallel on all ranks.
            weight = 2.0 / R
            candidates = [("contiguous", placement.contiguous(loads, R, slots), None),
                          ("ILP, load only", None, dict()),
                          (f"ILP, load + co-activation (weight {weight:g})", None,
                           dict(coactivation_weight=weight))]
            matrix = [coact[e * E:(e + 1) * E] for e in range(E)]
            base = None
            for name, ranks, kw in candidates:
                res = None
                if ranks is None:
                    res = placement.solve(loads, R, slots, None, matrix if kw else None,
                                          time_limit=args.time_limit, **kw)
                    ranks = res["placement"]
                # With weight 1 the co-activation reward is the count of pairs sharing a rank.
                c = placement.evaluate(ranks, loads, R, slots, None, matrix, coactivation_weight=1.0)
                rows = (2 * tokens - c["coactivation_reward"]) / tokens
                base = rows if base is None else base
                solve = f"{res['seconds']:.3f}" if res else "-"
                print(f"| {Path(path).parent.name} {layer} ({E}x{R}) | {name} | {c['imbalance']:.3f} | {rows:.3f} | "
                      f"{rows / base:.3f} | {solve} |")


def solver_table(args) -> None:
    table_header()
    for E, R in ((64, 8), (256, 32)):
        for alpha in (0.8, 1.2):
            loads, traffic = instance(E, R, alpha, args.seed)
            instance_rows(f"{E}x{R} Zipf {alpha}", loads, traffic, R, (5 * E) // (4 * R), args)
    print("\ncross-rank tokens: fraction of all routed tokens that leave their source rank; copies: expert "
          "copies held (E without replicas).")


def trace_table(args) -> None:
    """Instances from routing traces of real runs (python -m switchyard.trace): per MoE layer,
    the per-step moving-average load and the per-step traffic; slots = ceil(E / R), the
    runtime's default (no rank holds more experts than under the contiguous placement)."""
    from switchyard import trace as routing_trace

    table_header()
    for path in args.trace:
        t = routing_trace.load(path)
        stats = t.statistics
        for layer in range(stats.num_layers):
            p = stats.placement_problem(layer)
            loads, R = list(p["load"]) if isinstance(p, dict) else list(p.load), stats.num_source_ranks
            flat = list(p["traffic"]) if isinstance(p, dict) else list(p.traffic)
            E = len(loads)
            traffic = [flat[s * E:(s + 1) * E] for s in range(R)]
            label = f"{Path(path).parent.name} layer {layer} ({E}x{R})"
            instance_rows(label, loads, traffic, R, -(-E // R), args, ranks_per_node=0)


def projection_table(args) -> None:
    flops_per_token = 6 * HIDDEN * D_FF
    bytes_per_token = HIDDEN * DTYPE_BYTES
    model = placement.cost_model(hidden_size=HIDDEN, dtype_bytes=DTYPE_BYTES, flops_per_token=flops_per_token,
                                 rank_flops=RANK_FLOPS, alpha_intra_s=NVLINK_ALPHA_S, beta_intra_Bps=NVLINK_BETA_BPS,
                                 alpha_inter_s=IB_ALPHA_S, beta_inter_Bps=IB_BETA_BPS, ranks_per_node=8)
    token_compute_s = flops_per_token / RANK_FLOPS
    print("| GPUs | Zipf | method | max/mean load | cross-node tokens | compute ms | all-to-all ms | layer ms "
          "| layer / contiguous | solve s | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    E = PROJ_EXPERTS
    for R in (8, 16, 32, 64):
        slots = (5 * E) // (4 * R)
        kw = dict(ranks_per_node=8, node_factor=NVLINK_BETA_BPS / IB_BETA_BPS,
                  traffic_weight=2 * bytes_per_token / NVLINK_BETA_BPS / token_compute_s / R)
        for alpha in (0.8, 1.2):
            loads, traffic = instance(E, R, alpha, args.seed, tokens_per_expert=TOKENS_PER_GPU * TOP_K * R // E)
            rows = [("contiguous", placement.single_host(placement.contiguous(loads, R, slots)), None)]
            rows.append(("greedy (LPT)", placement.single_host(placement.greedy(loads, R, slots)), None))
            r = placement.solve(loads, R, slots, traffic, time_limit=args.time_limit, **kw)
            rows.append(("ILP (GLPK)", placement.single_host(r["placement"]), r))
            rr = placement.solve_replicated(loads, R, slots, traffic, replica_budget=R, time_limit=args.time_limit,
                                            **kw)
            rows.append((f"ILP + replicas ({R})", (rr["hosts"], rr["shares"]), rr))
            base = None
            for name, (hosts, shares), res in rows:
                c = placement.evaluate_replicated(hosts, shares, loads, R, slots, traffic, **kw)
                t = placement.project_layer_time(hosts, shares, loads, R, slots, traffic, model=model)
                base = t["total_s"] if base is None else base
                solve = f"{res['seconds']:.3f}" if res else "-"
                gap = f"{100 * res['gap']:.2f}%" if res else "-"
                print(f"| {R} | {alpha} | {name} | {c['imbalance']:.3f} | {c['cross_node_tokens'] / sum(loads):.3f} | "
                      f"{1e3 * t['compute_s']:.2f} | {1e3 * t['all_to_all_s']:.2f} | {1e3 * t['total_s']:.2f} | "
                      f"{t['total_s'] / base:.3f} | {solve} | {gap} |")
    print(f"\nlayer = compute + 2 x all-to-all (dispatch, combine), forward pass; alpha/beta: NVLink "
          f"{NVLINK_ALPHA_S * 1e6:.1f} us / {NVLINK_BETA_BPS / 1e9:.0f} GB/s, InfiniBand {IB_ALPHA_S * 1e6:.1f} us / "
          f"{IB_BETA_BPS / 1e9:.0f} GB/s; cross-node tokens: fraction of routed tokens crossing a node.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("solver", "projection", "trace"))
    ap.add_argument("--trace", nargs="*", default=[], help="routing trace files of real runs (docs/routing_trace.md)")
    args = ap.parse_args()
    if args.only in (None, "solver"):
        solver_table(args)
    if args.only in (None, "projection"):
        if args.only is None:
            print()
        projection_table(args)
    if args.trace and args.only in (None, "trace"):
        print()
        trace_table(args)
        print()
        grouping_table(args)


if __name__ == "__main__":
    main()
