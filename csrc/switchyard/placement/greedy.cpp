#include "switchyard/placement/greedy.h"
#include "switchyard/placement/replicated.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>

namespace switchyard::placement {

dispatch::ExpertPlacement greedy(const PlacementProblem& problem) {
  problem.validate();
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  // Stable: equal loads keep ascending ids, so the result is deterministic.
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return problem.load[a] > problem.load[b]; });
  std::vector<double> rank_load(R, 0.0);
  std::vector<int64_t> count(R, 0), map(E, -1);
  int64_t empty_ranks = R;
  for (int64_t i = 0; i < E; ++i) {
    const int64_t e = order[i];
    // While as many experts remain as there are empty ranks, only empty ranks may take one
    // (every rank must end with at least one expert). Ties: fewer experts, then lower rank.
    const bool must_fill = (E - i) <= empty_ranks;
    int64_t best = -1;
    for (int64_t r = 0; r < R; ++r) {
      if (count[r] >= problem.slots_per_rank || (must_fill && count[r] > 0)) continue;
      if (best < 0 || rank_load[r] < rank_load[best] ||
          (rank_load[r] == rank_load[best] && count[r] < count[best])) {
        best = r;
      }
    }
    TORCH_CHECK(best >= 0, "placement.greedy: no free slot for expert ", e, " (internal error)");
    if (count[best] == 0) --empty_ranks;
    map[e] = best;
    rank_load[best] += problem.load[e];
    ++count[best];
  }
  return dispatch::ExpertPlacement(std::move(map), R);
}

dispatch::ExpertPlacement contiguous(const PlacementProblem& problem) {
  problem.validate();
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  return dispatch::ExpertPlacement::contiguous(E, R);  // ceil(E/R) <= slots since E <= R*slots
}

PlacementCost evaluate(const PlacementProblem& problem, const dispatch::ExpertPlacement& placement) {
  problem.validate();
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  TORCH_CHECK_VALUE(placement.num_experts() == E && placement.num_ranks() == R, "placement.evaluate: expected "
                    "a placement of ", E, " experts on ", R, " ranks, got ", placement.num_experts(),
                    " experts on ", placement.num_ranks(), " ranks");
  // One host per expert is the replicated model with every share 1: one cost model for both.
  return evaluate(problem, ReplicatedPlacement::single(placement));
}

}  // namespace switchyard::placement
