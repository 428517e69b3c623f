// Replicated placements: an expert may live on several ranks, its tokens split among them.
//
// The runtime (dispatch::ExpertPlacement, the dispatcher, live re-placement) still keeps one
// host per expert; this type is what the solver and the cost model reason about, so that the
// gain of replicating hot experts can be measured before the dispatcher learns to split.
//
// Modelling choices (docs/placement.md, "Replicas"), all linear in the shares:
//   - load:     host r of expert e computes share[e][r] * load[e] tokens;
//   - traffic:  every source rank sends the same share of its tokens of e to each host, so
//               traffic cost = sum_{e, host r} share * traffic_cost(e, r) (a convex mix);
//   - coactivation: a pair (e, f) is rewarded when e and f have the same host set (with one
//               host each: the same rank, as before).
#pragma once

#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/placement/greedy.h"
#include "switchyard/placement/placement_problem.h"

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::placement {

struct ReplicatedPlacement {
  int64_t num_ranks = 0;
  std::vector<std::vector<int64_t>> hosts;  // [E] ascending distinct ranks hosting expert e
  std::vector<std::vector<double>> shares;  // [E] fraction of e's tokens each host computes (sum 1)

  // One host per expert, share 1.
  static ReplicatedPlacement single(const dispatch::ExpertPlacement& placement);
  int64_t num_experts() const { return static_cast<int64_t>(hosts.size()); }
  int64_t num_copies() const;                    // sum_e |hosts[e]|
  std::vector<int64_t> copies_per_rank() const;  // [R] experts (copies) each rank holds
  // Throws c10::ValueError unless the structure is sound: E experts, every host in [0, R),
  // hosts distinct and ascending, one share per host, shares >= 0 summing to 1 (within 1e-6), every rank
  // holding at least one copy.
  void validate(int64_t num_experts, int64_t num_ranks) const;
  // Throws c10::ValueError when the placement breaks the problem's memory: a rank holding
  // more than slots_per_rank copies, or more than E + replica_budget copies in total.
  void check_fits(const PlacementProblem& problem) const;
};

// LPT with splitting: while the heaviest per-copy load exceeds the mean rank load and the
// budget (and the free slots) allow, the expert with the largest per-copy load gets one more
// copy; then the copies (each load[e] / copies[e]) go longest first onto the least-loaded rank
// with a free slot that does not host that expert yet. Equal shares. With replica_budget = 0
// this is greedy()'s placement.
ReplicatedPlacement greedy_replicated(const PlacementProblem& problem);

// The cost model's terms for a replicated placement (consistent with the replica MILP).
PlacementCost evaluate(const PlacementProblem& problem, const ReplicatedPlacement& placement);

// [R] tokens each rank computes.
std::vector<double> rank_loads(const PlacementProblem& problem, const ReplicatedPlacement& placement);
// [R * R] row-major tokens sent from source rank s to rank r (the diagonal stays local).
// Needs the problem's traffic matrix.
std::vector<double> rank_traffic(const PlacementProblem& problem, const ReplicatedPlacement& placement);

}  // namespace switchyard::placement
