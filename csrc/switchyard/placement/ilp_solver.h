// The placement MILP, solved with GLPK (glp_intopt), warm-started from greedy().
//
// Variables: x[e,r] binary (expert e on rank r), L >= 0 the straggler load, and for each of
// the coactivation_top_k heaviest co-activated pairs (e,f) a z[e,f] in [0,1] that can be 1
// only when e and f share a rank.
//   minimise   L + sum_{e,r} traffic_cost(e,r) x[e,r] - coactivation_weight * sum c[e,f] z[e,f]
//   subject to sum_r x[e,r] = 1                      (each expert on one rank)
//              1 <= sum_e x[e,r] <= slots_per_rank    (memory; ExpertPlacement needs >= 1)
//              L >= sum_e load[e] x[e,r]              (for every rank)
//              z[e,f] <= 1 - x[e,r] + x[f,r]          (for every rank: z = 1 forces the same rank)
// The traffic term is linear in x: the hop cost of expert e from every source rank depends on
// its rank only. L's lower bound is max(max_e load[e], total / R), a valid cut the LP
// relaxation would not find by itself. Without traffic all ranks are interchangeable, so the
// k-th heaviest expert is restricted to ranks 0..k (symmetry breaking: any placement can be
// relabelled to satisfy it). Pairs beyond the top K are not modelled: the reported objective
// is always evaluate()'s (every pair counts), the bound is that of the modelled problem.
#pragma once

#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/placement/greedy.h"
#include "switchyard/placement/placement_problem.h"
#include "switchyard/placement/replicated.h"

#include <string>

namespace switchyard::placement {

struct SolveOptions {
  double time_limit_s = 1.0;      // wall time for the LP relaxation and the branch and bound
  double mip_gap = 1e-6;          // relative gap at which GLPK stops
  bool symmetry_breaking = true;  // only applied when the ranks are interchangeable
};

struct SolveResult {
  dispatch::ExpertPlacement placement;
  PlacementCost cost;       // evaluate(problem, placement)
  double objective = 0.0;   // cost.objective
  double bound = 0.0;       // lower bound on the modelled objective
  double gap = 0.0;         // (objective - bound) / max(|objective|, 1e-12), 0 when optimal
  double seconds = 0.0;     // wall time of solve()
  std::string status;       // "optimal" (within mip_gap) | "time_limit" | "feasible"
  bool improved_on_greedy = false;
};

// One host per expert (replica_budget is ignored). Throws c10::ValueError when the problem is
// infeasible or malformed (PlacementProblem::validate).
SolveResult solve(const PlacementProblem& problem, const SolveOptions& options = {});

struct ReplicatedSolveResult {
  ReplicatedPlacement placement;
  PlacementCost cost;       // evaluate(problem, placement)
  double objective = 0.0;   // cost.objective
  double bound = 0.0;       // lower bound on the modelled objective
  double gap = 0.0;         // as SolveResult::gap
  double seconds = 0.0;     // wall time
  std::string status;       // as SolveResult::status
  bool improved_on_greedy = false;  // better than greedy_replicated()
};

// The replica MILP (ilp_replicated.cpp), warm-started from greedy_replicated(). Variables:
// x[e,r] binary (a copy of e on r), f[e,r] in [0,1] the share of e's tokens computed on r, L,
// and the pair variables z.
//   minimise   L + sum_{e,r} traffic_cost(e,r) f[e,r] - coactivation_weight * sum c[e,f] z[e,f]
//   subject to sum_r f[e,r] = 1,  f[e,r] <= x[e,r]      (shares only on hosts)
//              1 <= sum_e x[e,r] <= slots_per_rank       (copies take slots)
//              sum_{e,r} x[e,r] <= E + replica_budget
//              L >= sum_e load[e] f[e,r]                 (every rank)
//              z[e,f] <= 1 - x[e,r] + x[f,r] and z[e,f] <= 1 - x[f,r] + x[e,r]  (same host set)
// With replica_budget = 0 it is solve() (the same model and answer), converted.
ReplicatedSolveResult solve_replicated(const PlacementProblem& problem, const SolveOptions& options = {});

}  // namespace switchyard::placement
