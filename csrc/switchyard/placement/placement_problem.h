// PlacementProblem: one expert-placement instance -- which rank of the expert-parallel group
// should host each routed expert (docs/placement.md).
//
// Cost model (all in tokens, so the terms add up):
//   objective = max_r load(r)                                   the straggler rank
//             + traffic_weight * sum_{s,e} traffic[s,e] * hop(s, rank(e))
//             - coactivation_weight * sum_{e<f, rank(e)=rank(f)} coactivation[e,f]
// hop(s, r) = 0 when s == r, 1 inside a node, node_factor across nodes (ranks_per_node
// consecutive ranks form a node; 0 = one node). Every rank must host between 1 and
// slots_per_rank experts (ExpertPlacement needs at least one per rank).
//
// Replicas (replica_budget > 0, replicated.h): an expert may be hosted on several ranks, at
// most replica_budget extra copies in total, each copy taking a slot; its tokens are split
// among its hosts in continuous shares (every source rank sends the same share of its tokens
// of e to each host), so load and traffic are linear in the shares. 0 = one host per expert.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::placement {

struct PlacementProblem {
  std::vector<double> load;          // [E] tokens routed to each expert
  int64_t num_ranks = 1;             // R
  int64_t slots_per_rank = 1;        // experts a rank can hold (memory)
  std::vector<double> traffic;       // [R * E] row-major (source rank, expert), or empty
  std::vector<double> coactivation;  // [E * E] symmetric pair counts, or empty
  int64_t ranks_per_node = 0;        // 0: all ranks on one node
  double traffic_weight = 0.0;       // cost of one token sent to another rank of the node
  double node_factor = 2.0;          // hop cost multiplier across nodes (>= 1)
  double coactivation_weight = 0.0;  // reward per co-activated pair count sharing a rank
  int64_t coactivation_top_k = 256;  // the ILP models only the K heaviest pairs (see ilp_solver.h)
  int64_t replica_budget = 0;        // extra expert copies allowed in total (0 = no replicas)

  int64_t num_experts() const { return static_cast<int64_t>(load.size()); }
  bool has_traffic() const { return !traffic.empty() && traffic_weight != 0.0; }
  bool has_coactivation() const { return !coactivation.empty() && coactivation_weight != 0.0; }
  // Throws c10::ValueError naming the offending field, the expected and the actual value.
  void validate() const;
  // hop(s, r) as above.
  double hop(int64_t source_rank, int64_t rank) const;
  // Weighted traffic cost of putting expert e on rank r: traffic_weight * sum_s traffic[s,e] * hop(s,r).
  double traffic_cost(int64_t expert, int64_t rank) const;
};

}  // namespace switchyard::placement
