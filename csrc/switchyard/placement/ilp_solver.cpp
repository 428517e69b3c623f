#include "switchyard/placement/ilp_solver.h"

#include "switchyard/placement/ilp_internal.h"

#include <c10/util/Exception.h>
#include <glpk.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>

namespace switchyard::placement {

using detail::CallbackState;
using detail::Clock;
using detail::Pair;
using detail::ProbDeleter;
using detail::Triplets;
using detail::modelled_pairs_max;
using detail::top_pairs;


SolveResult solve(const PlacementProblem& problem, const SolveOptions& options) {
  const auto start = Clock::now();
  problem.validate();
  TORCH_CHECK_VALUE(options.time_limit_s > 0.0 && std::isfinite(options.time_limit_s),
                    "placement.solve: expected time_limit > 0 seconds, got ", options.time_limit_s);
  TORCH_CHECK_VALUE(options.mip_gap >= 0.0, "placement.solve: expected mip_gap >= 0, got ", options.mip_gap);
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  const std::vector<Pair> pairs = top_pairs(problem);
  const int64_t P = static_cast<int64_t>(pairs.size());
  const int64_t num_x = E * R, col_L = num_x + 1, num_cols = num_x + 1 + P;
  auto col_x = [R](int64_t e, int64_t r) { return static_cast<int>(1 + e * R + r); };
  auto col_z = [col_L](int64_t k) { return static_cast<int>(col_L + 1 + k); };

  // Experts by descending load (stable): the order of symmetry breaking and of greedy.
  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return problem.load[a] > problem.load[b]; });
  const bool symmetric = !problem.has_traffic() && options.symmetry_breaking;

  // Warm start: greedy, relabelled so that it satisfies the symmetry breaking (ranks numbered
  // by their first expert in `order`); the relabelling changes no cost when ranks are symmetric.
  std::vector<int64_t> warm_map = greedy(problem).rank_of_expert();
  if (symmetric) {
    std::vector<int64_t> label(R, -1);
    int64_t next = 0;
    for (int64_t e : order) {
      if (label[warm_map[e]] < 0) label[warm_map[e]] = next++;
    }
    for (int64_t& r : warm_map) r = label[r];
  }
  const dispatch::ExpertPlacement warm_placement(warm_map, R);
  const PlacementCost warm_cost = evaluate(problem, warm_placement);

  double total = 0.0, max_load = 0.0;
  for (double l : problem.load) {
    total += l;
    max_load = std::max(max_load, l);
  }
  // A bound that needs no LP: the straggler is at least the mean and the heaviest expert;
  // each expert pays at least its cheapest rank's traffic; at most every modelled pair is rewarded.
  double trivial_bound = std::max(max_load, total / static_cast<double>(R));
  std::vector<std::vector<double>> cost(E, std::vector<double>(R, 0.0));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < R; ++r) cost[e][r] = problem.traffic_cost(e, r);
    trivial_bound += *std::min_element(cost[e].begin(), cost[e].end());
  }
  for (const Pair& pr : pairs) trivial_bound -= problem.coactivation_weight * pr.count;

  // --- the model ---
  std::unique_ptr<glp_prob, ProbDeleter> lp(glp_create_prob());
  glp_prob* m = lp.get();
  glp_set_obj_dir(m, GLP_MIN);
  glp_add_cols(m, static_cast<int>(num_cols));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < R; ++r) {
      const int c = col_x(e, r);
      glp_set_col_kind(m, c, GLP_BV);
      glp_set_obj_coef(m, c, cost[e][r]);
    }
  }
  if (symmetric) {
    for (int64_t k = 0; k < E; ++k) {
      for (int64_t r = k + 1; r < R; ++r) glp_set_col_bnds(m, col_x(order[k], r), GLP_FX, 0.0, 0.0);
    }
  }
  glp_set_col_bnds(m, col_L, GLP_LO, std::max(max_load, total / static_cast<double>(R)), 0.0);
  glp_set_obj_coef(m, col_L, 1.0);
  for (int64_t k = 0; k < P; ++k) {
    glp_set_col_bnds(m, col_z(k), GLP_DB, 0.0, 1.0);
    glp_set_obj_coef(m, col_z(k), -problem.coactivation_weight * pairs[k].count);
  }

  Triplets triplets;
  auto put = [&](int row, int col, double v) { triplets.put(row, col, v); };
  const int rows_assign = 1, rows_count = rows_assign + static_cast<int>(E);
  const int rows_load = rows_count + static_cast<int>(R), rows_pair = rows_load + static_cast<int>(R);
  glp_add_rows(m, static_cast<int>(E + 2 * R + P * R));
  for (int64_t e = 0; e < E; ++e) {
    glp_set_row_bnds(m, rows_assign + e, GLP_FX, 1.0, 1.0);
    for (int64_t r = 0; r < R; ++r) put(rows_assign + e, col_x(e, r), 1.0);
  }
  for (int64_t r = 0; r < R; ++r) {
    const int row = rows_count + static_cast<int>(r);
    if (problem.slots_per_rank == 1) {
      glp_set_row_bnds(m, row, GLP_FX, 1.0, 1.0);
    } else {
      glp_set_row_bnds(m, row, GLP_DB, 1.0, static_cast<double>(problem.slots_per_rank));
    }
    for (int64_t e = 0; e < E; ++e) put(row, col_x(e, r), 1.0);
    const int lrow = rows_load + static_cast<int>(r);  // sum load x - L <= 0
    glp_set_row_bnds(m, lrow, GLP_UP, 0.0, 0.0);
    for (int64_t e = 0; e < E; ++e) {
      if (problem.load[e] != 0.0) put(lrow, col_x(e, r), problem.load[e]);
    }
    put(lrow, col_L, -1.0);
  }
  for (int64_t k = 0; k < P; ++k) {
    for (int64_t r = 0; r < R; ++r) {  // z + x[e,r] - x[f,r] <= 1
      const int row = rows_pair + static_cast<int>(k * R + r);
      glp_set_row_bnds(m, row, GLP_UP, 0.0, 1.0);
      put(row, col_z(k), 1.0);
      put(row, col_x(pairs[k].e, r), 1.0);
      put(row, col_x(pairs[k].f, r), -1.0);
    }
  }
  triplets.load_into(m);

  CallbackState state;
  state.warm.assign(num_cols + 1, 0.0);
  for (int64_t e = 0; e < E; ++e) state.warm[col_x(e, warm_map[e])] = 1.0;
  state.warm[col_L] = warm_cost.max_load;
  for (int64_t k = 0; k < P; ++k) {
    state.warm[col_z(k)] = warm_map[pairs[k].e] == warm_map[pairs[k].f] ? 1.0 : 0.0;
  }

  // --- the LP relaxation, then branch and bound ---
  const detail::MilpOutcome milp =
      detail::relax_then_branch(m, start, options.time_limit_s, options.mip_gap, state, trivial_bound);
  std::string status = milp.status;
  double bound = milp.bound;
  std::vector<int64_t> ilp_map;
  if (milp.has_solution) {
    ilp_map.resize(E);
    for (int64_t e = 0; e < E; ++e) {
      int64_t best = 0;
      for (int64_t r = 1; r < R; ++r) {
        if (glp_mip_col_val(m, col_x(e, r)) > glp_mip_col_val(m, col_x(e, best))) best = r;
      }
      ilp_map[e] = best;
    }
  }

  // The ILP's answer unless greedy's is strictly better by the full cost model (possible only
  // when pairs beyond the top K matter, or when no integer solution was reached).
  dispatch::ExpertPlacement placement = warm_placement;
  PlacementCost best_cost = warm_cost;
  bool improved = false;
  if (!ilp_map.empty()) {
    dispatch::ExpertPlacement candidate(ilp_map, R);
    const PlacementCost c = evaluate(problem, candidate);
    if (c.objective <= warm_cost.objective) {
      improved = c.objective < warm_cost.objective - 1e-9 * std::max(1.0, std::abs(warm_cost.objective));
      placement = std::move(candidate);
      best_cost = c;
    }
  }
  if (status == "optimal" && P == modelled_pairs_max(problem)) {
    bound = std::min(bound, best_cost.objective);  // every term modelled: the optimum is exact
  }
  const double gap = std::max(0.0, best_cost.objective - bound) / std::max(std::abs(best_cost.objective), 1e-12);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return SolveResult{std::move(placement), best_cost, best_cost.objective, bound, gap, seconds, status, improved};
}

}  // namespace switchyard::placement
