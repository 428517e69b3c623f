// Baseline placements and the cost model's evaluation of any placement.
//
// greedy(): longest-processing-time first -- experts in descending load order, each onto the
// least-loaded rank that still has a free slot. It ignores traffic and co-activation; it is
// both a baseline and the ILP's warm start.
#pragma once

#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/placement/placement_problem.h"

namespace switchyard::placement {

struct PlacementCost {
  double max_load = 0.0;             // the straggler rank's tokens
  double mean_load = 0.0;            // total / R
  double imbalance = 0.0;            // max / mean (1 = perfect); 0 when nothing is routed
  double cross_rank_tokens = 0.0;    // sum traffic[s,e] with s != rank(e)
  double cross_node_tokens = 0.0;    // the part of it that crosses a node boundary
  double traffic_cost = 0.0;         // traffic_weight * sum traffic * hop
  double coactivation_reward = 0.0;  // coactivation_weight * pairs sharing a rank
  double objective = 0.0;            // max_load + traffic_cost - coactivation_reward
};

dispatch::ExpertPlacement greedy(const PlacementProblem& problem);
// ExpertPlacement::contiguous, checked against the slots (throws c10::ValueError when a block
// of ceil(E/R) experts exceeds slots_per_rank -- impossible when E <= R * slots).
dispatch::ExpertPlacement contiguous(const PlacementProblem& problem);
PlacementCost evaluate(const PlacementProblem& problem, const dispatch::ExpertPlacement& placement);

}  // namespace switchyard::placement
