"""Expert placement on synthetic skew: contiguous vs greedy (LPT) vs the GLPK MILP.

Loads follow Zipf(alpha) over the experts (expert ids shuffled, so hot experts are not all in
one contiguous block by construction); each expert's tokens come from the ranks in random
proportions (u^3, normalised: a few dominant source ranks), giving the traffic matrix.
Every rank has slots = 1.25 * E / R (25% memory headroom); 8 ranks per node, crossing nodes
costs node_factor = 4; traffic_weight = 1 / R (sends run in parallel on all ranks, so the
total cross-rank volume is compared with one rank's share). Usage:

  python scripts/bench/bench_placement.py [--time-limit 1.0] [--seed 0]

Prints a markdown table; ratios are to contiguous placement of the same instance.
"""

from __future__ import annotations

import argparse
import random

from switchyard import placement


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| instance | terms | method | max/mean load | cross-rank tokens | objective | obj / contiguous "
          "| solve s | gap | status |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for E, R in ((64, 8), (256, 32)):
        for alpha in (0.8, 1.2):
            loads, traffic = instance(E, R, alpha, args.seed)
            slots = (5 * E) // (4 * R)
            for terms in ("load", "load+traffic"):
                kw = dict(ranks_per_node=8, node_factor=4.0, traffic_weight=1.0 / R)
                t = traffic if terms == "load+traffic" else None
                base = placement.evaluate(placement.contiguous(loads, R, slots), loads, R, slots, traffic, **kw)
                rows = [("contiguous", base, None)]
                g = placement.greedy(loads, R, slots, t, **kw)
                rows.append(("greedy (LPT)", placement.evaluate(g, loads, R, slots, traffic, **kw), None))
                r = placement.solve(loads, R, slots, t, time_limit=args.time_limit, **kw)
                rows.append(("ILP (GLPK)", placement.evaluate(r["placement"], loads, R, slots, traffic, **kw), r))
                obj0 = placement.evaluate(placement.contiguous(loads, R, slots), loads, R, slots, t, **kw)["objective"]
                for name, c, res in rows:
                    # The objective of the instance solved (without traffic: max load only).
                    obj = c["max_load"] + (c["traffic_cost"] if t is not None else 0.0)
                    solve = f"{res['seconds']:.3f}" if res else "-"
                    gap = f"{100 * res['gap']:.2f}%" if res else "-"
                    status = res["status"] if res else "-"
                    print(f"| {E}x{R} Zipf {alpha} | {terms} | {name} | {c['imbalance']:.3f} | "
                          f"{c['cross_rank_tokens'] / sum(loads):.3f} | {obj:.0f} | {obj / obj0:.3f} | "
                          f"{solve} | {gap} | {status} |")
    print("\ncross-rank tokens: fraction of all routed tokens that leave their source rank.")


if __name__ == "__main__":
    main()
