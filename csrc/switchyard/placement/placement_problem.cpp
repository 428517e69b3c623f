#include "switchyard/placement/placement_problem.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace switchyard::placement {

void PlacementProblem::validate() const {
  const int64_t E = num_experts(), R = num_ranks;
  TORCH_CHECK_VALUE(R >= 1, "placement: expected num_ranks >= 1, got ", R);
  TORCH_CHECK_VALUE(slots_per_rank >= 1, "placement: expected slots_per_rank >= 1, got ", slots_per_rank);
  TORCH_CHECK_VALUE(E >= 1, "placement: expected at least one expert, got an empty load vector");
  TORCH_CHECK_VALUE(E <= R * slots_per_rank, "placement: infeasible: ", E, " experts do not fit in ", R,
                    " ranks x ", slots_per_rank, " slots = ", R * slots_per_rank, " slots");
  TORCH_CHECK_VALUE(E >= R, "placement: infeasible: every rank must hold at least one expert, but there are ",
                    E, " experts for ", R, " ranks");
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK_VALUE(std::isfinite(load[e]) && load[e] >= 0.0, "placement: expected finite non-negative loads, "
                      "got load[", e, "] = ", load[e]);
  }
  if (!traffic.empty()) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(traffic.size()) == R * E, "placement: expected traffic of shape [",
                      R, ", ", E, "] (source rank x expert) = ", R * E, " entries, got ", traffic.size());
    for (size_t i = 0; i < traffic.size(); ++i) {
      TORCH_CHECK_VALUE(std::isfinite(traffic[i]) && traffic[i] >= 0.0, "placement: expected finite non-negative "
                        "traffic, got traffic[", i / E, ", ", i % E, "] = ", traffic[i]);
    }
  }
  if (!coactivation.empty()) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(coactivation.size()) == E * E, "placement: expected coactivation of "
                      "shape [", E, ", ", E, "] = ", E * E, " entries, got ", coactivation.size());
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t f = 0; f < E; ++f) {
        const double c = coactivation[e * E + f];
        TORCH_CHECK_VALUE(std::isfinite(c) && c >= 0.0, "placement: expected finite non-negative coactivation, "
                          "got coactivation[", e, ", ", f, "] = ", c);
        TORCH_CHECK_VALUE(c == coactivation[f * E + e], "placement: expected a symmetric coactivation matrix, got "
                          "coactivation[", e, ", ", f, "] = ", c, " but coactivation[", f, ", ", e, "] = ",
                          coactivation[f * E + e]);
      }
    }
  }
  TORCH_CHECK_VALUE(ranks_per_node >= 0, "placement: expected ranks_per_node >= 0 (0 = one node), got ",
                    ranks_per_node);
  TORCH_CHECK_VALUE(std::isfinite(traffic_weight) && traffic_weight >= 0.0,
                    "placement: expected traffic_weight >= 0, got ", traffic_weight);
  TORCH_CHECK_VALUE(std::isfinite(node_factor) && node_factor >= 1.0,
                    "placement: expected node_factor >= 1, got ", node_factor);
  TORCH_CHECK_VALUE(std::isfinite(coactivation_weight) && coactivation_weight >= 0.0,
                    "placement: expected coactivation_weight >= 0, got ", coactivation_weight);
  TORCH_CHECK_VALUE(replica_budget >= 0, "placement: expected replica_budget >= 0 (0 = no replicas), got ",
                    replica_budget);
  TORCH_CHECK_VALUE(coactivation_top_k >= 0, "placement: expected coactivation_top_k >= 0, got ",
                    coactivation_top_k);
}

double PlacementProblem::hop(int64_t source_rank, int64_t rank) const {
  if (source_rank == rank) return 0.0;
  if (ranks_per_node <= 0 || source_rank / ranks_per_node == rank / ranks_per_node) return 1.0;
  return node_factor;
}

double PlacementProblem::traffic_cost(int64_t expert, int64_t rank) const {
  if (!has_traffic()) return 0.0;
  const int64_t E = num_experts();
  double sum = 0.0;
  for (int64_t s = 0; s < num_ranks; ++s) sum += traffic[s * E + expert] * hop(s, rank);
  return traffic_weight * sum;
}

}  // namespace switchyard::placement
