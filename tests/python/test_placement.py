"""Expert placement (issue H, first part): the GLPK MILP against brute force on instances small
enough to enumerate, constraint satisfaction on random larger ones, never worse than greedy,
clear errors for infeasible or malformed input, and determinism.

The brute-force objective is recomputed here from the cost model's definition
(placement_problem.h), independently of the C++ evaluate()."""

import itertools
import random

import pytest

from switchyard import placement

TOL = 1e-6


def hop(s, r, ranks_per_node, node_factor):
    if s == r:
        return 0.0
    if ranks_per_node <= 0 or s // ranks_per_node == r // ranks_per_node:
        return 1.0
    return node_factor


def objective(assign, loads, R, traffic=None, coact=None, ranks_per_node=0, traffic_weight=1.0,
              node_factor=2.0, coactivation_weight=0.0):
    rank_load = [0.0] * R
    for e, r in enumerate(assign):
        rank_load[r] += loads[e]
    obj = max(rank_load)
    if traffic is not None:
        obj += traffic_weight * sum(traffic[s][e] * hop(s, r, ranks_per_node, node_factor)
                                    for s in range(R) for e, r in enumerate(assign))
    if coact is not None:
        E = len(loads)
        obj -= coactivation_weight * sum(coact[e][f] for e in range(E) for f in range(e + 1, E)
                                         if assign[e] == assign[f])
    return obj


def brute_force(loads, R, slots, **kw):
    best = None
    for assign in itertools.product(range(R), repeat=len(loads)):
        counts = [assign.count(r) for r in range(R)]
        if min(counts) < 1 or max(counts) > slots:
            continue
        obj = objective(assign, loads, R, **kw)
        if best is None or obj < best:
            best = obj
    return best


def random_instance(rng, E, R, with_traffic=True, with_coact=False):
    loads = [rng.uniform(0, 100) for _ in range(E)]
    traffic = [[rng.uniform(0, 20) for _ in range(E)] for _ in range(R)] if with_traffic else None
    coact = None
    if with_coact:
        coact = [[0.0] * E for _ in range(E)]
        for e in range(E):
            for f in range(e + 1, E):
                coact[e][f] = coact[f][e] = float(rng.randint(0, 30))
    return loads, traffic, coact


def check_slots(assign, E, R, slots):
    assert len(assign) == E
    assert all(0 <= r < R for r in assign)
    counts = [assign.count(r) for r in range(R)]
    assert min(counts) >= 1 and max(counts) <= slots, counts


@pytest.mark.parametrize("seed", range(5))
def test_loads_only_matches_brute_force(seed):
    rng = random.Random(seed)
    loads, _, _ = random_instance(rng, 6, 3, with_traffic=False)
    r = placement.solve(loads, 3, 2)
    best = brute_force(loads, 3, 2)
    assert r["status"] == "optimal"
    assert r["objective"] == pytest.approx(best, rel=TOL)
    assert r["objective"] == pytest.approx(objective(r["placement"], loads, 3), rel=1e-12)
    assert r["bound"] <= r["objective"] + TOL and r["gap"] <= 1e-6
    check_slots(r["placement"], 6, 3, 2)


@pytest.mark.parametrize("seed", range(5))
def test_traffic_and_nodes_match_brute_force(seed):
    rng = random.Random(100 + seed)
    E, R, slots = 6, 4, 2
    loads, traffic, _ = random_instance(rng, E, R)
    kw = dict(traffic=traffic, ranks_per_node=2, traffic_weight=0.3, node_factor=3.0)
    r = placement.solve(loads, R, slots, **kw)
    best = brute_force(loads, R, slots, **kw)
    assert r["status"] == "optimal"
    assert r["objective"] == pytest.approx(best, rel=TOL)
    assert r["objective"] == pytest.approx(objective(r["placement"], loads, R, **kw), rel=1e-12)
    check_slots(r["placement"], E, R, slots)


@pytest.mark.parametrize("seed", range(4))
def test_coactivation_matches_brute_force(seed):
    rng = random.Random(200 + seed)
    E, R, slots = 6, 3, 3
    loads, traffic, coact = random_instance(rng, E, R, with_coact=True)
    kw = dict(traffic=traffic, coact=coact, traffic_weight=0.2, coactivation_weight=0.5)
    r = placement.solve(loads, R, slots, traffic, coact, traffic_weight=0.2, coactivation_weight=0.5)
    best = brute_force(loads, R, slots, **kw)
    assert r["status"] == "optimal"
    assert r["objective"] == pytest.approx(best, rel=TOL)
    check_slots(r["placement"], E, R, slots)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_and_evaluate_agree_with_python(seed):
    rng = random.Random(300 + seed)
    E, R, slots = 12, 4, 4
    loads, traffic, coact = random_instance(rng, E, R, with_coact=True)
    kw = dict(traffic_weight=0.1, coactivation_weight=0.3)
    g = placement.greedy(loads, R, slots, traffic, coact, **kw)
    check_slots(g, E, R, slots)
    c = placement.evaluate(g, loads, R, slots, traffic, coact, **kw)
    assert c["objective"] == pytest.approx(objective(g, loads, R, traffic, coact, **kw), rel=1e-12)
    assert c["mean_load"] == pytest.approx(sum(loads) / R)
    assert c["cross_rank_tokens"] == pytest.approx(
        sum(traffic[s][e] for s in range(R) for e in range(E) if g[e] != s))
    assert placement.contiguous(loads, R, slots) == [e // 3 for e in range(E)]


@pytest.mark.parametrize("seed", range(4))
def test_random_larger_instances_respect_slots_and_beat_greedy(seed):
    rng = random.Random(400 + seed)
    E, R = rng.choice([(24, 4), (40, 8), (64, 8)])
    slots = E // R + rng.randint(0, 2)
    loads, traffic, _ = random_instance(rng, E, R)
    kw = dict(traffic_weight=0.05, ranks_per_node=2)
    r = placement.solve(loads, R, slots, traffic, time_limit=0.5, **kw)
    check_slots(r["placement"], E, R, slots)
    g = placement.greedy(loads, R, slots, traffic, **kw)
    gobj = placement.evaluate(g, loads, R, slots, traffic, **kw)["objective"]
    assert r["objective"] <= gobj + 1e-9
    assert r["bound"] <= r["objective"] + 1e-6
    assert r["status"] in ("optimal", "time_limit", "feasible")
    assert r["seconds"] < 5.0


def test_uneven_slots_and_one_expert_per_rank():
    # E = R: every rank holds exactly one expert, whatever the loads.
    r = placement.solve([5.0, 1.0, 1.0, 1.0], 4, 3)
    assert sorted(r["placement"]) == [0, 1, 2, 3]
    assert r["objective"] == pytest.approx(5.0)
    # A single heavy expert: the straggler bound is that expert.
    r = placement.solve([100.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 5)
    assert r["objective"] == pytest.approx(100.0) and r["status"] == "optimal"


def test_infeasible_and_malformed_inputs():
    with pytest.raises(ValueError, match=r"7 experts do not fit in 3 ranks x 2 slots = 6"):
        placement.solve([1.0] * 7, 3, 2)
    with pytest.raises(ValueError, match=r"2 experts for 3 ranks"):
        placement.solve([1.0, 2.0], 3, 2)
    with pytest.raises(ValueError, match=r"load\[1\] = -1"):
        placement.solve([1.0, -1.0], 2, 1)
    with pytest.raises(ValueError, match=r"traffic of shape \[2, 4\]"):
        placement.solve([1.0] * 4, 2, 2, traffic=[[1.0] * 4] * 3)
    with pytest.raises(ValueError, match=r"symmetric coactivation"):
        placement.solve([1.0] * 2, 2, 1, coactivation=[[0.0, 1.0], [2.0, 0.0]], coactivation_weight=1.0)
    with pytest.raises(ValueError, match=r"time_limit > 0"):
        placement.solve([1.0] * 2, 2, 1, time_limit=0.0)


def test_deterministic():
    rng = random.Random(7)
    loads, traffic, coact = random_instance(rng, 32, 8, with_coact=True)
    kw = dict(traffic_weight=0.05, coactivation_weight=0.1, ranks_per_node=4)
    a = placement.solve(loads, 8, 5, traffic, coact, time_limit=2.0, **kw)
    b = placement.solve(loads, 8, 5, traffic, coact, time_limit=2.0, **kw)
    if a["status"] == "optimal" and b["status"] == "optimal":
        assert a["placement"] == b["placement"]
    # Small instances always finish, so they are reproducible bit for bit.
    small = random_instance(random.Random(8), 8, 4)
    x = placement.solve(small[0], 4, 2, small[1], traffic_weight=0.2)
    y = placement.solve(small[0], 4, 2, small[1], traffic_weight=0.2)
    assert x["placement"] == y["placement"] and x["objective"] == y["objective"]
    assert placement.greedy(loads, 8, 5) == placement.greedy(loads, 8, 5)


@pytest.mark.parametrize("seed", range(3))
def test_symmetry_breaking_keeps_the_optimum(seed):
    rng = random.Random(500 + seed)
    loads, _, coact = random_instance(rng, 7, 3, with_traffic=False, with_coact=True)
    kw = dict(coactivation_weight=0.4)
    a = placement.solve(loads, 3, 3, None, coact, symmetry_breaking=True, **kw)
    b = placement.solve(loads, 3, 3, None, coact, symmetry_breaking=False, **kw)
    best = brute_force(loads, 3, 3, coact=coact, **kw)
    assert a["status"] == b["status"] == "optimal"
    assert a["objective"] == pytest.approx(best, rel=TOL) and b["objective"] == pytest.approx(best, rel=TOL)


def test_time_limit_returns_a_feasible_placement_with_its_gap():
    # 64 experts, 8 ranks, no slot headroom, no symmetry breaking: GLPK cannot close the gap
    # in 0.2 s, so the answer is the incumbent (at least greedy's) with a valid bound.
    rng = random.Random(11)
    loads = [1.0 / (k + 1) ** 0.8 * 1e4 for k in range(64)]
    rng.shuffle(loads)
    r = placement.solve(loads, 8, 8, time_limit=0.2, symmetry_breaking=False)
    check_slots(r["placement"], 64, 8, 8)
    assert r["seconds"] < 1.5
    assert r["bound"] <= r["objective"] + 1e-6
    assert r["objective"] <= placement.evaluate(placement.greedy(loads, 8, 8), loads, 8, 8)["objective"] + 1e-9
    if r["status"] == "time_limit":
        assert r["gap"] > 0.0
        assert r["gap"] == pytest.approx((r["objective"] - r["bound"]) / r["objective"])
    else:
        assert r["status"] == "optimal" and r["gap"] <= 1e-6


def test_accepts_tensors_and_numpy():
    torch = pytest.importorskip("torch")
    loads = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    traffic = torch.ones(2, 4)
    r = placement.solve(loads, 2, 2, traffic, traffic_weight=0.1)
    r2 = placement.solve(loads.numpy(), 2, 2, traffic.numpy(), traffic_weight=0.1)
    assert r["placement"] == r2["placement"] and r["status"] == "optimal"
    assert r["max_load"] == pytest.approx(5.0)


# --- replicas: an expert on several ranks, its tokens split (replicated.h) ---------------

def host_sets(E, R, slots, budget):
    """Every assignment of a non-empty host set (bit mask) per expert within slots and budget."""
    masks = range(1, 1 << R)
    for combo in itertools.product(masks, repeat=E):
        copies = sum(bin(m).count("1") for m in combo)
        if copies > E + budget:
            continue
        counts = [sum((m >> r) & 1 for m in combo) for r in range(R)]
        if min(counts) < 1 or max(counts) > slots:
            continue
        yield combo


def best_straggler(combo, loads, R):
    """Exact min over splits of the max rank load for fixed host sets: max over rank subsets S
    of (load of the experts confined to S) / |S| (the confined experts must be computed on S;
    by max-flow/min-cut the split exists otherwise)."""
    best = 0.0
    for s in range(1, 1 << R):
        inside = sum(loads[e] for e, m in enumerate(combo) if m & ~s == 0)
        best = max(best, inside / bin(s).count("1"))
    return best


def coact_reward(combo, coact, weight):
    E = len(combo)
    return weight * sum(coact[e][f] for e in range(E) for f in range(e + 1, E) if combo[e] == combo[f])


def brute_force_replicated(loads, R, slots, budget, coact=None, coactivation_weight=0.0):
    best = None
    for combo in host_sets(len(loads), R, slots, budget):
        obj = best_straggler(combo, loads, R)
        if coact is not None:
            obj -= coact_reward(combo, coact, coactivation_weight)
        best = obj if best is None or obj < best else best
    return best


def brute_force_one_replica_with_traffic(loads, R, slots, traffic, **kw):
    """Budget 1 with traffic: at most one expert has two hosts, so the split is one share t of
    that expert on its first host. The objective is convex piecewise linear in t (max of
    linear rank loads plus a linear traffic term): its minimum is at t = 0, t = 1 or where two
    of the lines max_other, load(a), load(b) cross -- all enumerated here."""
    E = len(loads)
    best = None
    for combo in host_sets(E, R, slots, 1):
        hosts = [[r for r in range(R) if (m >> r) & 1] for m in combo]
        split = [e for e in range(E) if len(hosts[e]) == 2]
        cands = [None] if not split else [0.0, 1.0]
        if split:
            e = split[0]
            a, b = hosts[e]
            base = [0.0] * R
            for f in range(E):
                if f != e:
                    base[hosts[f][0]] += loads[f]
            other = max([base[r] for r in range(R) if r not in (a, b)], default=0.0)
            L = loads[e]
            if L > 0:
                cands += [(base[b] + L - base[a]) / (2 * L), (other - base[a]) / L, (base[b] + L - other) / L]
            cands = [min(1.0, max(0.0, t)) for t in cands]
        for t in cands:
            shares = [[1.0] if len(h) == 1 else [t, 1.0 - t] for h in hosts]
            obj = objective_replicated(hosts, shares, loads, R, traffic=traffic, **kw)
            best = obj if best is None or obj < best else best
    return best


def objective_replicated(hosts, shares, loads, R, traffic=None, coact=None, ranks_per_node=0,
                         traffic_weight=1.0, node_factor=2.0, coactivation_weight=0.0):
    rank_load = [0.0] * R
    for e, (h, s) in enumerate(zip(hosts, shares)):
        for r, x in zip(h, s):
            rank_load[r] += loads[e] * x
    obj = max(rank_load)
    if traffic is not None:
        obj += traffic_weight * sum(traffic[s][e] * x * hop(s, r, ranks_per_node, node_factor)
                                    for s in range(R) for e, (h, sh) in enumerate(zip(hosts, shares))
                                    for r, x in zip(h, sh))
    if coact is not None:
        E = len(loads)
        obj -= coactivation_weight * sum(coact[e][f] for e in range(E) for f in range(e + 1, E)
                                         if hosts[e] == hosts[f])
    return obj


@pytest.mark.parametrize("seed", range(6))
def test_replicas_match_brute_force(seed):
    rng = random.Random(600 + seed)
    E, R, slots, budget = (4, 3, 3, 2) if seed % 2 else (5, 3, 3, 1)
    loads, _, _ = random_instance(rng, E, R, with_traffic=False)
    loads[0] *= 5  # a hot expert: the single-host optimum is bound by it
    r = placement.solve_replicated(loads, R, slots, replica_budget=budget)
    assert r["status"] == "optimal"
    assert r["objective"] == pytest.approx(brute_force_replicated(loads, R, slots, budget), rel=1e-6)
    placement.check_fits(r["hosts"], r["shares"], loads, R, slots, replica_budget=budget)
    assert r["objective"] == pytest.approx(objective_replicated(r["hosts"], r["shares"], loads, R), rel=1e-9)
    assert r["objective"] < placement.solve(loads, R, slots)["objective"]


@pytest.mark.parametrize("seed", range(3))
def test_replicas_with_coactivation_match_brute_force(seed):
    rng = random.Random(650 + seed)
    E, R, slots, budget = 4, 3, 3, 2
    loads, _, coact = random_instance(rng, E, R, with_traffic=False, with_coact=True)
    r = placement.solve_replicated(loads, R, slots, None, coact, replica_budget=budget, coactivation_weight=0.5)
    assert r["status"] == "optimal"
    best = brute_force_replicated(loads, R, slots, budget, coact, coactivation_weight=0.5)
    assert r["objective"] == pytest.approx(best, rel=1e-6)
    assert r["objective"] == pytest.approx(objective_replicated(r["hosts"], r["shares"], loads, R, coact=coact,
                                                                coactivation_weight=0.5), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_one_replica_with_traffic_matches_brute_force(seed):
    rng = random.Random(700 + seed)
    E, R, slots = 4, 3, 2
    loads, traffic, _ = random_instance(rng, E, R)
    loads[seed % E] *= 4
    kw = dict(ranks_per_node=2, traffic_weight=0.3, node_factor=3.0)
    r = placement.solve_replicated(loads, R, slots, traffic, replica_budget=1, **kw)
    assert r["status"] == "optimal"
    best = brute_force_one_replica_with_traffic(loads, R, slots, traffic, **kw)
    assert r["objective"] == pytest.approx(best, rel=1e-6)
    assert r["objective"] == pytest.approx(
        objective_replicated(r["hosts"], r["shares"], loads, R, traffic=traffic, **kw), rel=1e-9)
    c = placement.evaluate_replicated(r["hosts"], r["shares"], loads, R, slots, traffic, **kw)
    assert c["objective"] == pytest.approx(r["objective"], rel=1e-12)


def test_replica_budget_zero_is_the_one_host_solver():
    rng = random.Random(9)
    loads, traffic, _ = random_instance(rng, 12, 4)
    kw = dict(traffic_weight=0.1, ranks_per_node=2)
    a = placement.solve(loads, 4, 4, traffic, **kw)
    b = placement.solve_replicated(loads, 4, 4, traffic, replica_budget=0, **kw)
    assert b["hosts"] == [[r] for r in a["placement"]] and b["objective"] == a["objective"]
    assert placement.greedy_replicated(loads, 4, 4, replica_budget=0)[0] == [[r] for r in placement.greedy(loads, 4, 4)]
    h, s = placement.single_host(a["placement"])
    assert placement.evaluate_replicated(h, s, loads, 4, 4, traffic, **kw) == pytest.approx(
        placement.evaluate(a["placement"], loads, 4, 4, traffic, **kw))


def test_replicas_on_zipf_cut_the_straggler_and_fit():
    # Zipf 1.2 on 64 x 8: the hottest expert alone exceeds the mean rank load.
    rng = random.Random(0)
    w = [1.0 / (k + 1) ** 1.2 for k in range(64)]
    rng.shuffle(w)
    loads = [1e5 * x / sum(w) for x in w]
    one = placement.solve(loads, 8, 10)
    g_h, g_s = placement.greedy_replicated(loads, 8, 10, replica_budget=8)
    placement.check_fits(g_h, g_s, loads, 8, 10, replica_budget=8)
    r = placement.solve_replicated(loads, 8, 10, replica_budget=8, time_limit=1.0)
    placement.check_fits(r["hosts"], r["shares"], loads, 8, 10, replica_budget=8)
    assert max(loads) > sum(loads) / 8
    assert r["imbalance"] < one["imbalance"] - 0.5
    assert r["objective"] <= placement.evaluate_replicated(g_h, g_s, loads, 8, 10)["objective"] + 1e-9
    assert r["bound"] <= r["objective"] + 1e-6 and r["seconds"] < 3.0


def test_replicated_placement_errors():
    loads = [4.0, 2.0, 2.0]
    with pytest.raises(ValueError, match=r"4 expert copies exceed 3 experts \+ replica_budget 0"):
        placement.check_fits([[0, 1], [0], [1]], [[0.5, 0.5], [1.0], [1.0]], loads, 2, 2)
    with pytest.raises(ValueError, match=r"shares of expert 0 to sum to 1"):
        placement.evaluate_replicated([[0, 1], [0], [1]], [[0.5, 0.4], [1.0], [1.0]], loads, 2, 2)
    with pytest.raises(ValueError, match=r"replica_budget >= 0"):
        placement.solve_replicated(loads, 2, 2, replica_budget=-1)


def test_cost_model_projection():
    loads = [30.0, 10.0, 10.0, 10.0]
    traffic = [[10.0, 5.0, 0.0, 5.0], [20.0, 5.0, 10.0, 5.0]]
    m = placement.cost_model(hidden_size=4, dtype_bytes=2, flops_per_token=100, rank_flops=1e3,
                             alpha_intra_s=1.0, beta_intra_Bps=8.0)
    hosts, shares = placement.single_host([0, 0, 1, 1])
    rt = placement.rank_traffic(hosts, shares, loads, 2, 2, traffic)
    assert rt == [[15.0, 5.0], [25.0, 15.0]]
    t = placement.project_layer_time(hosts, shares, loads, 2, 2, traffic, model=m)
    # rank 1 sends 25 tokens * 8 B to rank 0: 1 + 200 / 8 = 26 on both sides of that transfer
    # (rank 0 receives it); the first slowest rank is reported
    assert t["all_to_all_s"] == pytest.approx(26.0) and t["all_to_all_rank"] == 0
    assert t["compute_s"] == pytest.approx(40 * 100 / 1e3)
    assert t["total_s"] == pytest.approx(4.0 + 52.0)
    with pytest.raises(ValueError, match=r"rank_flops > 0"):
        placement.cost_model(hidden_size=4, flops_per_token=1, rank_flops=0, alpha_intra_s=0, beta_intra_Bps=1)
