// What the two GLPK models (ilp_solver.cpp: one host per expert; ilp_replicated.cpp: replicas
// with split load) share: the modelled co-activation pairs, the branch-and-bound callback that
// injects the warm start and tracks the bound, and the time budget. Internal to placement/.
#pragma once

#include "switchyard/placement/placement_problem.h"

#include <glpk.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

namespace switchyard::placement::detail {

using Clock = std::chrono::steady_clock;

struct Pair {
  int64_t e, f;
  double count;
};

// The K heaviest co-activated pairs (e < f), heaviest first; ties by (e, f) for determinism.
inline std::vector<Pair> top_pairs(const PlacementProblem& p) {
  std::vector<Pair> pairs;
  if (!p.has_coactivation()) return pairs;
  const int64_t E = p.num_experts();
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t f = e + 1; f < E; ++f) {
      if (p.coactivation[e * E + f] > 0.0) pairs.push_back({e, f, p.coactivation[e * E + f]});
    }
  }
  std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) { return a.count > b.count; });
  if (static_cast<int64_t>(pairs.size()) > p.coactivation_top_k) pairs.resize(p.coactivation_top_k);
  return pairs;
}

// Number of co-activated pairs with a positive count: when the top K holds them all, the
// model is the whole cost function.
inline int64_t modelled_pairs_max(const PlacementProblem& p) {
  if (!p.has_coactivation()) return 0;
  const int64_t E = p.num_experts();
  int64_t n = 0;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t f = e + 1; f < E; ++f) n += p.coactivation[e * E + f] > 0.0 ? 1 : 0;
  }
  return n;
}

// What the branch-and-bound callback needs: the warm start and the best bound seen.
struct CallbackState {
  std::vector<double> warm;  // 1-based column values of the greedy placement
  bool warm_given = false;
  double bound = -INFINITY;
};

inline void on_tree_event(glp_tree* tree, void* info) {
  auto* state = static_cast<CallbackState*>(info);
  if (glp_ios_reason(tree) == GLP_IHEUR && !state->warm_given) {
    state->warm_given = true;
    glp_ios_heur_sol(tree, state->warm.data());  // rejected silently when not better
  }
  const int best = glp_ios_best_node(tree);
  if (best != 0) state->bound = std::max(state->bound, glp_ios_node_bound(tree, best));
}

// The constraint matrix as GLPK's 1-based (row, column, value) triplets.
struct Triplets {
  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0.0};
  void put(int row, int col, double v) {
    ia.push_back(row);
    ja.push_back(col);
    ar.push_back(v);
  }
  void load_into(glp_prob* m) { glp_load_matrix(m, static_cast<int>(ia.size() - 1), ia.data(), ja.data(), ar.data()); }
};

struct ProbDeleter {
  void operator()(glp_prob* p) const { glp_delete_prob(p); }
};

// Milliseconds left of `limit_s` since `start` (at least 1: GLPK reads 0 as "no limit").
inline int ms_left(Clock::time_point start, double limit_s) {
  const double used = std::chrono::duration<double>(Clock::now() - start).count();
  return static_cast<int>(std::max(1.0, std::floor((limit_s - used) * 1000.0)));
}

// What the LP relaxation and the branch and bound established.
struct MilpOutcome {
  bool has_solution = false;         // glp_mip_col_val holds an integer-feasible point
  std::string status = "time_limit"; // "optimal" (within mip_gap) | "time_limit" | "feasible"
  double bound = 0.0;                // lower bound on the modelled objective
};

// The LP relaxation (its optimum bounds the MILP), then branch and bound from the callback's
// warm start (`state`), both within what is left of `limit_s` since `start`. No presolve: the
// warm start is in the original columns. `bound` starts at `trivial_bound`.
inline MilpOutcome relax_then_branch(glp_prob* m, Clock::time_point start, double limit_s, double mip_gap,
                                     CallbackState& state, double trivial_bound) {
  MilpOutcome out;
  out.bound = trivial_bound;
  glp_smcp lp_options;
  glp_init_smcp(&lp_options);
  lp_options.msg_lev = GLP_MSG_OFF;
  lp_options.tm_lim = ms_left(start, limit_s);
  if (glp_simplex(m, &lp_options) != 0 || glp_get_status(m) != GLP_OPT) return out;
  out.bound = std::max(out.bound, glp_get_obj_val(m));
  glp_iocp mip_options;
  glp_init_iocp(&mip_options);
  mip_options.msg_lev = GLP_MSG_OFF;
  mip_options.tm_lim = ms_left(start, limit_s);
  mip_options.mip_gap = mip_gap;
  mip_options.br_tech = GLP_BR_DTH;
  mip_options.bt_tech = GLP_BT_BLB;
  mip_options.presolve = GLP_OFF;
  mip_options.cb_func = on_tree_event;
  mip_options.cb_info = &state;
  const int mip_ret = glp_intopt(m, &mip_options);
  const int mip_status = glp_mip_status(m);
  out.has_solution = mip_status == GLP_OPT || mip_status == GLP_FEAS;
  if (std::isfinite(state.bound)) out.bound = std::max(out.bound, state.bound);
  // GLP_EMIPGAP: stopped at the relative gap tolerance, i.e. optimal within mip_gap.
  if ((mip_ret == 0 && mip_status == GLP_OPT) || (mip_ret == GLP_EMIPGAP && mip_status == GLP_FEAS)) {
    out.status = "optimal";
    if (mip_ret == 0) out.bound = std::max(out.bound, glp_mip_obj_val(m));
  } else {
    out.status = mip_ret == GLP_ETMLIM ? "time_limit" : "feasible";
  }
  return out;
}

}  // namespace switchyard::placement::detail
