// The placement solver from C++ (switchyard/placement): validate() errors that name the field,
// greedy invariants, the GLPK MILP (with and without replicas) against brute force on tiny
// instances, infeasible input refused, determinism, and the projected-time cost model. The
// Python suite (tests/python/test_placement.py) covers the same ground with traffic and
// co-activation at more sizes; this file keeps the C++ API honest on its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>

#include "switchyard/placement/cost_model.h"
#include "switchyard/placement/greedy.h"
#include "switchyard/placement/ilp_solver.h"
#include "switchyard/placement/placement_problem.h"
#include "switchyard/placement/replicated.h"
#include "../common/error_of.h"

namespace sp = switchyard::placement;
using switchyard::testing::error_of;

namespace {

sp::PlacementProblem random_problem(uint32_t seed, int64_t E, int64_t R, int64_t slots, bool traffic) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 100.0);
  sp::PlacementProblem p;
  p.num_ranks = R;
  p.slots_per_rank = slots;
  for (int64_t e = 0; e < E; ++e) p.load.push_back(u(rng));
  if (traffic) {
    for (int64_t i = 0; i < R * E; ++i) p.traffic.push_back(u(rng) / 5.0);
    p.traffic_weight = 0.3;
    p.ranks_per_node = 2;
    p.node_factor = 3.0;
  }
  return p;
}

// The cost model recomputed from its definition (placement_problem.h), independent of evaluate().
double objective_of(const sp::PlacementProblem& p, const std::vector<int64_t>& rank_of) {
  const int64_t E = p.num_experts(), R = p.num_ranks;
  std::vector<double> load(R, 0.0);
  double traffic = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    load[rank_of[e]] += p.load[e];
    if (!p.traffic.empty()) {
      for (int64_t s = 0; s < R; ++s) traffic += p.traffic[s * E + e] * p.hop(s, rank_of[e]);
    }
  }
  return *std::max_element(load.begin(), load.end()) + p.traffic_weight * traffic;
}

// Best one-host placement by enumerating all R^E assignments.
double brute_force(const sp::PlacementProblem& p) {
  const int64_t E = p.num_experts(), R = p.num_ranks;
  std::vector<int64_t> a(E, 0);
  double best = INFINITY;
  while (true) {
    std::vector<int64_t> count(R, 0);
    for (int64_t r : a) ++count[r];
    if (*std::min_element(count.begin(), count.end()) >= 1 &&
        *std::max_element(count.begin(), count.end()) <= p.slots_per_rank) {
      best = std::min(best, objective_of(p, a));
    }
    int64_t i = 0;
    while (i < E && ++a[i] == R) a[i++] = 0;
    if (i == E) break;
  }
  return best;
}

// Best replicated placement without traffic: enumerate every host set per expert (non-empty
// rank subsets as bit masks); for fixed host sets the best split's straggler is exactly
// max over rank subsets S of (load of the experts whose hosts lie inside S) / |S| (a flow
// argument: the experts confined to S must be computed on S, and otherwise the split exists).
double brute_force_replicated(const sp::PlacementProblem& p) {
  const int64_t E = p.num_experts(), R = p.num_ranks;
  const int64_t full = (int64_t{1} << R) - 1;
  std::vector<int64_t> mask(E, 1);
  double best = INFINITY;
  while (true) {
    std::vector<int64_t> count(R, 0);
    int64_t copies = 0;
    for (int64_t m : mask) {
      for (int64_t r = 0; r < R; ++r) count[r] += (m >> r) & 1;
      copies += __builtin_popcountll(m);
    }
    if (copies <= E + p.replica_budget && *std::min_element(count.begin(), count.end()) >= 1 &&
        *std::max_element(count.begin(), count.end()) <= p.slots_per_rank) {
      double straggler = 0.0;
      for (int64_t s = 1; s <= full; ++s) {
        double inside = 0.0;
        for (int64_t e = 0; e < E; ++e) {
          if ((mask[e] & ~s) == 0) inside += p.load[e];
        }
        straggler = std::max(straggler, inside / __builtin_popcountll(s));
      }
      best = std::min(best, straggler);
    }
    int64_t i = 0;
    while (i < E && ++mask[i] > full) mask[i++] = 1;
    if (i == E) break;
  }
  return best;
}

}  // namespace

TEST(PlacementProblem, ValidateNamesTheField) {
  sp::PlacementProblem p = random_problem(0, 4, 2, 2, true);
  p.validate();
  auto broken = [&](const std::function<void(sp::PlacementProblem&)>& edit) {
    sp::PlacementProblem q = p;
    edit(q);
    return error_of([&] { q.validate(); });
  };
  EXPECT_NE(broken([](auto& q) { q.num_ranks = 0; }).find("num_ranks >= 1, got 0"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.slots_per_rank = 0; }).find("slots_per_rank >= 1, got 0"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.load.clear(); }).find("empty load vector"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.load[1] = -1.0; }).find("load[1] = -1"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.traffic.pop_back(); }).find("traffic of shape [2, 4]"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.coactivation = {0, 1, 1, 0}; }).find("coactivation of shape [4, 4]"),
            std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.node_factor = 0.5; }).find("node_factor >= 1, got 0.5"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.traffic_weight = -1.0; }).find("traffic_weight >= 0"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.replica_budget = -1; }).find("replica_budget >= 0"), std::string::npos);
  EXPECT_NE(broken([](auto& q) { q.ranks_per_node = -2; }).find("ranks_per_node >= 0"), std::string::npos);
}

TEST(PlacementProblem, InfeasibleIsRefused) {
  sp::PlacementProblem p = random_problem(1, 7, 3, 2, false);
  const std::string more = error_of([&] { sp::solve(p); });
  EXPECT_NE(more.find("7 experts do not fit in 3 ranks x 2 slots = 6 slots"), std::string::npos) << more;
  EXPECT_NE(error_of([&] { sp::greedy(p); }).find("do not fit"), std::string::npos);
  p.replica_budget = 3;  // replicas never make room for more experts
  EXPECT_NE(error_of([&] { sp::solve_replicated(p); }).find("do not fit"), std::string::npos);
  sp::PlacementProblem q = random_problem(2, 2, 3, 2, false);
  EXPECT_NE(error_of([&] { sp::solve(q); }).find("2 experts for 3 ranks"), std::string::npos);
}

TEST(PlacementGreedy, Invariants) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    std::mt19937 rng(seed);
    const int64_t R = 2 + rng() % 7, E = R + rng() % (3 * R), slots = (E + R - 1) / R + rng() % 3;
    const sp::PlacementProblem p = random_problem(seed, E, R, slots, false);
    const auto g = sp::greedy(p);
    std::vector<int64_t> count(R, 0);
    for (int64_t e = 0; e < E; ++e) ++count[g.rank_of(e)];
    for (int64_t r = 0; r < R; ++r) {
      EXPECT_GE(count[r], 1);
      EXPECT_LE(count[r], slots);
    }
    // Expert ids in descending-load order land on ranks whose load never exceeds the
    // list-scheduling bound when slots do not bind.
    sp::PlacementProblem roomy = p;
    roomy.slots_per_rank = E;
    const sp::PlacementCost c = sp::evaluate(roomy, sp::greedy(roomy));
    EXPECT_LE(c.max_load, c.mean_load + *std::max_element(p.load.begin(), p.load.end()) + 1e-9);
    // Without replicas, greedy_replicated is greedy.
    const sp::ReplicatedPlacement gr = sp::greedy_replicated(p);
    for (int64_t e = 0; e < E; ++e) EXPECT_EQ(gr.hosts[e], std::vector<int64_t>{g.rank_of(e)});
    // With replicas: the copies fit the slots and the budget.
    sp::PlacementProblem rep = p;
    rep.replica_budget = 1 + seed % 4;
    const sp::ReplicatedPlacement gr2 = sp::greedy_replicated(rep);
    EXPECT_NO_THROW(gr2.check_fits(rep));
  }
}

TEST(PlacementGreedy, ReplicasSplitTheHottestExpert) {
  sp::PlacementProblem p;
  p.load = {90.0, 10.0, 10.0, 10.0};
  p.num_ranks = 2;
  p.slots_per_rank = 3;
  p.replica_budget = 1;
  const sp::ReplicatedPlacement g = sp::greedy_replicated(p);
  EXPECT_EQ(g.hosts[0], (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(g.num_copies(), 5);
  EXPECT_DOUBLE_EQ(sp::evaluate(p, g).max_load, 65.0);  // 45 + 10 + 10 vs 45 + 10
  const sp::ReplicatedSolveResult r = sp::solve_replicated(p);
  EXPECT_EQ(r.status, "optimal");
  EXPECT_NEAR(r.objective, 60.0, 1e-6);  // the split balances exactly: 120 / 2
  EXPECT_TRUE(r.improved_on_greedy);
}

TEST(PlacementIlp, EqualsBruteForce) {
  for (uint32_t seed = 0; seed < 6; ++seed) {
    const bool traffic = seed % 2 == 1;
    const sp::PlacementProblem p = random_problem(100 + seed, 6, traffic ? 4 : 3, 2, traffic);
    const sp::SolveResult r = sp::solve(p);
    EXPECT_EQ(r.status, "optimal");
    EXPECT_NEAR(r.objective, brute_force(p), 1e-6 * r.objective) << "seed " << seed;
    EXPECT_NEAR(r.objective, objective_of(p, r.placement.rank_of_expert()), 1e-9 * r.objective);
    EXPECT_LE(r.bound, r.objective + 1e-6);
  }
}

TEST(PlacementIlp, ReplicasEqualBruteForce) {
  for (uint32_t seed = 0; seed < 6; ++seed) {
    sp::PlacementProblem p = random_problem(200 + seed, 4 + seed % 2, 3, 3, false);
    if (seed % 3 == 0) p.load[0] *= 4.0;  // one hot expert: replicas pay off
    p.replica_budget = 1 + seed % 2;
    const sp::ReplicatedSolveResult r = sp::solve_replicated(p);
    EXPECT_EQ(r.status, "optimal");
    EXPECT_NEAR(r.objective, brute_force_replicated(p), 1e-6 * r.objective) << "seed " << seed;
    EXPECT_NO_THROW(r.placement.check_fits(p));
    EXPECT_NEAR(sp::evaluate(p, r.placement).objective, r.objective, 1e-9 * r.objective);
    // Budget 0 is the one-host solver exactly.
    p.replica_budget = 0;
    const sp::ReplicatedSolveResult r0 = sp::solve_replicated(p);
    const sp::SolveResult s0 = sp::solve(p);
    EXPECT_EQ(r0.objective, s0.objective);
    EXPECT_EQ(r0.placement.hosts, sp::ReplicatedPlacement::single(s0.placement).hosts);
  }
}

TEST(PlacementIlp, Deterministic) {
  sp::PlacementProblem p = random_problem(7, 16, 4, 5, true);
  const sp::SolveResult a = sp::solve(p), b = sp::solve(p);
  ASSERT_EQ(a.status, "optimal");
  EXPECT_EQ(a.placement.rank_of_expert(), b.placement.rank_of_expert());
  EXPECT_EQ(a.objective, b.objective);
  EXPECT_EQ(sp::greedy(p).rank_of_expert(), sp::greedy(p).rank_of_expert());
  p.replica_budget = 2;
  p.traffic.clear();
  p.load = {400, 10, 20, 30, 40, 50, 60, 70};
  const sp::ReplicatedSolveResult c = sp::solve_replicated(p), d = sp::solve_replicated(p);
  ASSERT_EQ(c.status, "optimal");
  EXPECT_EQ(c.placement.hosts, d.placement.hosts);
  EXPECT_EQ(c.placement.shares, d.placement.shares);
}

TEST(PlacementReplicated, ValidateAndFits) {
  sp::PlacementProblem p;
  p.load = {4.0, 2.0, 2.0};
  p.num_ranks = 2;
  p.slots_per_rank = 2;
  sp::ReplicatedPlacement ok{2, {{0, 1}, {0}, {1}}, {{0.5, 0.5}, {1.0}, {1.0}}};
  EXPECT_NO_THROW(ok.validate(3, 2));
  EXPECT_NE(error_of([&] { ok.check_fits(p); }).find("4 expert copies exceed 3 experts + replica_budget 0"),
            std::string::npos);
  p.replica_budget = 1;
  EXPECT_NO_THROW(ok.check_fits(p));
  EXPECT_DOUBLE_EQ(sp::evaluate(p, ok).max_load, 4.0);
  auto bad = ok;
  bad.shares[0] = {0.5, 0.4};
  EXPECT_NE(error_of([&] { bad.validate(3, 2); }).find("shares of expert 0 to sum to 1, got 0.9"), std::string::npos);
  bad = ok;
  bad.hosts[0] = {1, 0};
  EXPECT_NE(error_of([&] { bad.validate(3, 2); }).find("distinct and ascending"), std::string::npos);
  bad = ok;
  bad.hosts[0] = {0, 2};
  EXPECT_NE(error_of([&] { bad.validate(3, 2); }).find("hosts in [0, 2), got rank 2"), std::string::npos);
  bad = ok;
  bad.hosts = {{0}, {0}, {0}};
  bad.shares = {{1.0}, {1.0}, {1.0}};
  EXPECT_NE(error_of([&] { bad.validate(3, 2); }).find("rank 1 holds none"), std::string::npos);
}

TEST(PlacementCostModel, HandComputed) {
  // 4 ranks, 2 per node. Rank 0 sends 10 tokens to rank 1 (same node) and 20 to rank 2
  // (other node); rank 3 sends 5 to rank 0. 8 bytes per token.
  std::vector<double> traffic(16, 0.0);
  traffic[0 * 4 + 1] = 10;
  traffic[0 * 4 + 2] = 20;
  traffic[3 * 4 + 0] = 5;
  traffic[2 * 4 + 2] = 1000;  // local: free
  sp::CostModel m;
  m.hidden_size = 4;
  m.dtype_bytes = 2;
  m.flops_per_token = 100;
  m.rank_flops = 1e3;
  m.alpha_intra_s = 1.0;
  m.beta_intra_Bps = 8.0;
  m.alpha_inter_s = 10.0;
  m.beta_inter_Bps = 4.0;
  m.ranks_per_node = 2;
  const sp::LayerTime t = sp::project_layer_time({1, 2, 30, 4}, traffic, m);
  // rank 0 sends: 1 + 80/8 + 10 + 160/4 = 61; receives from rank 3 (other node): 10 + 40/4 = 20.
  EXPECT_DOUBLE_EQ(t.all_to_all_s, 61.0);
  EXPECT_EQ(t.all_to_all_rank, 0);
  EXPECT_DOUBLE_EQ(t.compute_s, 3.0);  // 30 tokens * 100 FLOPs / 1e3 FLOP/s
  EXPECT_EQ(t.compute_rank, 2);
  EXPECT_DOUBLE_EQ(t.total_s, 3.0 + 2 * 61.0);
  EXPECT_DOUBLE_EQ(t.max_send_bytes, 240.0);
  EXPECT_NE(error_of([&] { sp::project_layer_time({1, 2}, traffic, m); }).find("rank_traffic of shape [2, 2]"),
            std::string::npos);
  m.beta_inter_Bps = 0.0;
  EXPECT_NE(error_of([&] { sp::project_layer_time({1, 2, 3, 4}, traffic, m); }).find("beta_inter_Bps > 0"),
            std::string::npos);
}
