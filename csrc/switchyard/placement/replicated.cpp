#include "switchyard/placement/replicated.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace switchyard::placement {

ReplicatedPlacement ReplicatedPlacement::single(const dispatch::ExpertPlacement& placement) {
  ReplicatedPlacement p;
  p.num_ranks = placement.num_ranks();
  for (int64_t r : placement.rank_of_expert()) {
    p.hosts.push_back({r});
    p.shares.push_back({1.0});
  }
  return p;
}

int64_t ReplicatedPlacement::num_copies() const {
  int64_t n = 0;
  for (const auto& h : hosts) n += static_cast<int64_t>(h.size());
  return n;
}

std::vector<int64_t> ReplicatedPlacement::copies_per_rank() const {
  std::vector<int64_t> count(std::max<int64_t>(num_ranks, 0), 0);
  for (const auto& h : hosts) {
    for (int64_t r : h) {
      if (r >= 0 && r < num_ranks) ++count[r];
    }
  }
  return count;
}

void ReplicatedPlacement::validate(int64_t num_experts_expected, int64_t num_ranks_expected) const {
  TORCH_CHECK_VALUE(num_ranks == num_ranks_expected && num_experts() == num_experts_expected,
                    "placement: expected a replicated placement of ", num_experts_expected, " experts on ",
                    num_ranks_expected, " ranks, got ", num_experts(), " experts on ", num_ranks, " ranks");
  TORCH_CHECK_VALUE(shares.size() == hosts.size(), "placement: expected one share list per expert (",
                    hosts.size(), "), got ", shares.size());
  for (int64_t e = 0; e < num_experts(); ++e) {
    const auto& h = hosts[e];
    const auto& s = shares[e];
    TORCH_CHECK_VALUE(!h.empty(), "placement: expected at least one host for expert ", e, ", got none");
    TORCH_CHECK_VALUE(s.size() == h.size(), "placement: expected ", h.size(), " shares for expert ", e,
                      " (one per host), got ", s.size());
    double sum = 0.0;
    for (size_t i = 0; i < h.size(); ++i) {
      TORCH_CHECK_VALUE(h[i] >= 0 && h[i] < num_ranks, "placement: expected hosts in [0, ", num_ranks,
                        "), got rank ", h[i], " for expert ", e);
      TORCH_CHECK_VALUE(i == 0 || h[i - 1] < h[i], "placement: expected the hosts of expert ", e,
                        " distinct and ascending, got rank ", h[i], " after rank ", h[i == 0 ? 0 : i - 1]);
      TORCH_CHECK_VALUE(std::isfinite(s[i]) && s[i] >= 0.0, "placement: expected shares >= 0, got share ", s[i],
                        " of expert ", e, " on rank ", h[i]);
      sum += s[i];
    }
    TORCH_CHECK_VALUE(std::abs(sum - 1.0) <= 1e-6, "placement: expected the shares of expert ", e,
                      " to sum to 1, got ", sum);
  }
  const std::vector<int64_t> count = copies_per_rank();
  for (int64_t r = 0; r < num_ranks; ++r) {
    TORCH_CHECK_VALUE(count[r] >= 1, "placement: expected every rank to hold at least one expert, rank ", r,
                      " holds none");
  }
}

void ReplicatedPlacement::check_fits(const PlacementProblem& problem) const {
  validate(problem.num_experts(), problem.num_ranks);
  const std::vector<int64_t> count = copies_per_rank();
  for (int64_t r = 0; r < num_ranks; ++r) {
    TORCH_CHECK_VALUE(count[r] <= problem.slots_per_rank, "placement: rank ", r, " holds ", count[r],
                      " expert copies, more than slots_per_rank = ", problem.slots_per_rank);
  }
  TORCH_CHECK_VALUE(num_copies() <= problem.num_experts() + problem.replica_budget, "placement: ", num_copies(),
                    " expert copies exceed ", problem.num_experts(), " experts + replica_budget ",
                    problem.replica_budget);
}

ReplicatedPlacement greedy_replicated(const PlacementProblem& problem) {
  problem.validate();
  const int64_t E = problem.num_experts(), R = problem.num_ranks, S = problem.slots_per_rank;
  const double total = std::accumulate(problem.load.begin(), problem.load.end(), 0.0);
  const double mean = total / static_cast<double>(R);
  std::vector<int64_t> copies(E, 1);
  int64_t extra = std::min(problem.replica_budget, R * S - E);
  while (extra > 0) {
    int64_t hot = -1;  // the largest per-copy load among experts that can take another copy
    for (int64_t e = 0; e < E; ++e) {
      if (copies[e] >= R) continue;
      if (hot < 0 || problem.load[e] / copies[e] > problem.load[hot] / copies[hot]) hot = e;
    }
    if (hot < 0 || problem.load[hot] / copies[hot] <= mean) break;
    ++copies[hot];
    --extra;
  }
  struct Piece {
    int64_t expert;
    double load;
  };
  std::vector<Piece> pieces;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t c = 0; c < copies[e]; ++c) pieces.push_back({e, problem.load[e] / copies[e]});
  }
  // Stable: equal loads keep ascending ids (and copies in order), so the result is deterministic.
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.load > b.load; });
  std::vector<double> rank_load(R, 0.0);
  std::vector<int64_t> count(R, 0);
  std::vector<std::vector<int64_t>> hosts(E);
  int64_t empty_ranks = R;
  const int64_t N = static_cast<int64_t>(pieces.size());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = pieces[i].expert;
    // As in greedy(): once the pieces left are no more than the empty ranks, only empty ranks
    // may take one. Ties: fewer experts, then lower rank.
    const bool must_fill = (N - i) <= empty_ranks;
    int64_t best = -1;
    for (int64_t r = 0; r < R; ++r) {
      if (count[r] >= S || (must_fill && count[r] > 0)) continue;
      if (std::find(hosts[e].begin(), hosts[e].end(), r) != hosts[e].end()) continue;
      if (best < 0 || rank_load[r] < rank_load[best] ||
          (rank_load[r] == rank_load[best] && count[r] < count[best])) {
        best = r;
      }
    }
    if (best < 0) {
      // Every rank with a free slot already hosts e (only possible for a replica, and never
      // while an empty rank remains): drop this copy; the others share its load.
      TORCH_CHECK(!hosts[e].empty(), "placement.greedy_replicated: no free slot for expert ", e, " (internal error)");
      continue;
    }
    if (count[best] == 0) --empty_ranks;
    hosts[e].push_back(best);
    rank_load[best] += pieces[i].load;
    ++count[best];
  }
  ReplicatedPlacement p;
  p.num_ranks = R;
  p.hosts = std::move(hosts);
  for (auto& h : p.hosts) {
    std::sort(h.begin(), h.end());
    p.shares.emplace_back(h.size(), 1.0 / static_cast<double>(h.size()));
  }
  return p;
}

std::vector<double> rank_loads(const PlacementProblem& problem, const ReplicatedPlacement& placement) {
  problem.validate();
  placement.validate(problem.num_experts(), problem.num_ranks);
  std::vector<double> load(problem.num_ranks, 0.0);
  for (int64_t e = 0; e < problem.num_experts(); ++e) {
    for (size_t i = 0; i < placement.hosts[e].size(); ++i) {
      load[placement.hosts[e][i]] += placement.shares[e][i] * problem.load[e];
    }
  }
  return load;
}

std::vector<double> rank_traffic(const PlacementProblem& problem, const ReplicatedPlacement& placement) {
  problem.validate();
  placement.validate(problem.num_experts(), problem.num_ranks);
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  TORCH_CHECK_VALUE(!problem.traffic.empty(), "placement.rank_traffic: expected the problem's traffic matrix [",
                    R, ", ", E, "], got none");
  std::vector<double> out(R * R, 0.0);
  for (int64_t s = 0; s < R; ++s) {
    for (int64_t e = 0; e < E; ++e) {
      const double t = problem.traffic[s * E + e];
      for (size_t i = 0; i < placement.hosts[e].size(); ++i) out[s * R + placement.hosts[e][i]] += t * placement.shares[e][i];
    }
  }
  return out;
}

PlacementCost evaluate(const PlacementProblem& problem, const ReplicatedPlacement& placement) {
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  const std::vector<double> rank_load = rank_loads(problem, placement);  // validates both
  PlacementCost c;
  const double total = std::accumulate(problem.load.begin(), problem.load.end(), 0.0);
  c.max_load = *std::max_element(rank_load.begin(), rank_load.end());
  c.mean_load = total / static_cast<double>(R);
  c.imbalance = c.mean_load > 0.0 ? c.max_load / c.mean_load : 0.0;
  if (!problem.traffic.empty()) {
    for (int64_t s = 0; s < R; ++s) {
      for (int64_t e = 0; e < E; ++e) {
        for (size_t i = 0; i < placement.hosts[e].size(); ++i) {
          const int64_t r = placement.hosts[e][i];
          const double t = problem.traffic[s * E + e] * placement.shares[e][i];
          if (r == s) continue;
          c.cross_rank_tokens += t;
          if (problem.ranks_per_node > 0 && s / problem.ranks_per_node != r / problem.ranks_per_node) {
            c.cross_node_tokens += t;
          }
          c.traffic_cost += problem.traffic_weight * t * problem.hop(s, r);
        }
      }
    }
  }
  if (!problem.coactivation.empty()) {
    double pairs = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t f = e + 1; f < E; ++f) {
        if (placement.hosts[e] == placement.hosts[f]) pairs += problem.coactivation[e * E + f];
      }
    }
    c.coactivation_reward = problem.coactivation_weight * pairs;
  }
  c.objective = c.max_load + c.traffic_cost - c.coactivation_reward;
  return c;
}

}  // namespace switchyard::placement
