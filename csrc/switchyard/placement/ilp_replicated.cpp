// The replica MILP (ilp_solver.h, solve_replicated): like solve()'s model, plus continuous
// shares f[e,r] that split an expert's tokens among the ranks hosting a copy of it.
#include "switchyard/placement/ilp_internal.h"
#include "switchyard/placement/ilp_solver.h"

#include <c10/util/Exception.h>
#include <glpk.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

namespace switchyard::placement {

using detail::CallbackState;
using detail::Clock;
using detail::Pair;
using detail::ProbDeleter;
using detail::Triplets;

namespace {

// Ranks numbered by first appearance when scanning the experts in `order` and each expert's
// hosts: the relabelling that makes any placement satisfy the symmetry breaking below.
ReplicatedPlacement relabel(const ReplicatedPlacement& p, const std::vector<int64_t>& order) {
  const int64_t R = p.num_ranks;
  std::vector<int64_t> label(R, -1);
  int64_t next = 0;
  for (int64_t e : order) {
    for (int64_t r : p.hosts[e]) {
      if (label[r] < 0) label[r] = next++;
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    if (label[r] < 0) label[r] = next++;  // unreachable: every rank hosts a copy
  }
  ReplicatedPlacement out = p;
  for (size_t e = 0; e < p.hosts.size(); ++e) {
    std::vector<std::pair<int64_t, double>> hs;
    for (size_t i = 0; i < p.hosts[e].size(); ++i) hs.emplace_back(label[p.hosts[e][i]], p.shares[e][i]);
    std::sort(hs.begin(), hs.end());
    for (size_t i = 0; i < hs.size(); ++i) {
      out.hosts[e][i] = hs[i].first;
      out.shares[e][i] = hs[i].second;
    }
  }
  return out;
}

// The best shares for fixed host sets: an LP (minimise L + sum traffic_cost * f subject to
// sum_hosts f = 1 and L >= every rank's load), solved with GLPK's simplex. Co-activation does
// not depend on the shares. Returns the placement unchanged when the LP fails.
ReplicatedPlacement best_shares(const PlacementProblem& problem, const ReplicatedPlacement& p,
                                const std::vector<std::vector<double>>& cost, Clock::time_point start,
                                double time_limit_s) {
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  std::vector<int64_t> first(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) first[e + 1] = first[e] + static_cast<int64_t>(p.hosts[e].size());
  const int64_t N = first[E];
  const int col_L = static_cast<int>(N + 1);
  std::unique_ptr<glp_prob, ProbDeleter> lp(glp_create_prob());
  glp_prob* m = lp.get();
  glp_set_obj_dir(m, GLP_MIN);
  glp_add_cols(m, static_cast<int>(N + 1));
  glp_add_rows(m, static_cast<int>(E + R));
  Triplets a;
  for (int64_t e = 0; e < E; ++e) {
    glp_set_row_bnds(m, static_cast<int>(1 + e), GLP_FX, 1.0, 1.0);
    for (int64_t i = first[e]; i < first[e + 1]; ++i) {
      const int col = static_cast<int>(1 + i);
      const int64_t r = p.hosts[e][i - first[e]];
      glp_set_col_bnds(m, col, GLP_DB, 0.0, 1.0);
      glp_set_obj_coef(m, col, cost[e][r]);
      a.put(static_cast<int>(1 + e), col, 1.0);
      if (problem.load[e] != 0.0) a.put(static_cast<int>(1 + E + r), col, problem.load[e]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    glp_set_row_bnds(m, static_cast<int>(1 + E + r), GLP_UP, 0.0, 0.0);
    a.put(static_cast<int>(1 + E + r), col_L, -1.0);
  }
  glp_set_col_bnds(m, col_L, GLP_LO, 0.0, 0.0);
  glp_set_obj_coef(m, col_L, 1.0);
  a.load_into(m);
  glp_smcp options;
  glp_init_smcp(&options);
  options.msg_lev = GLP_MSG_OFF;
  options.tm_lim = detail::ms_left(start, time_limit_s);
  if (glp_simplex(m, &options) != 0 || glp_get_status(m) != GLP_OPT) return p;
  ReplicatedPlacement out = p;
  for (int64_t e = 0; e < E; ++e) {
    double sum = 0.0;
    for (int64_t i = first[e]; i < first[e + 1]; ++i) {
      out.shares[e][i - first[e]] = std::max(0.0, glp_get_col_prim(m, static_cast<int>(1 + i)));
      sum += out.shares[e][i - first[e]];
    }
    if (!(sum > 0.0)) return p;
    for (double& x : out.shares[e]) x /= sum;
  }
  return out;
}

// Local search from a placement: while copies are left in the budget, give the straggler
// rank's heaviest expert (by computed tokens) one more copy on the least-loaded rank with a
// free slot that does not host it, and re-optimise the shares. Several ranks often tie at the
// straggler load, so a copy that does not raise the objective is kept (the next one may lower
// it); the best placement seen is returned. Stops when no copy can be placed, when a copy
// makes things worse, or when time runs out.
ReplicatedPlacement replicate_stragglers(const PlacementProblem& problem, ReplicatedPlacement p,
                                         const std::vector<std::vector<double>>& cost, Clock::time_point start,
                                         double deadline_s) {
  const int64_t E = problem.num_experts(), R = problem.num_ranks;
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  p = best_shares(problem, p, cost, start, deadline_s);
  double objective = evaluate(problem, p).objective;
  ReplicatedPlacement best = p;
  double best_objective = objective;
  while (p.num_copies() < E + problem.replica_budget && elapsed() < deadline_s) {
    const std::vector<double> load = rank_loads(problem, p);
    const std::vector<int64_t> count = p.copies_per_rank();
    const int64_t straggler = std::max_element(load.begin(), load.end()) - load.begin();
    int64_t hot = -1;
    double hot_tokens = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      for (size_t i = 0; i < p.hosts[e].size(); ++i) {
        const double tokens = p.shares[e][i] * problem.load[e];
        if (p.hosts[e][i] == straggler && tokens > hot_tokens) hot = e, hot_tokens = tokens;
      }
    }
    int64_t target = -1;
    for (int64_t r = 0; r < R && hot >= 0; ++r) {
      if (count[r] >= problem.slots_per_rank) continue;
      if (std::binary_search(p.hosts[hot].begin(), p.hosts[hot].end(), r)) continue;
      if (target < 0 || load[r] < load[target]) target = r;
    }
    if (target < 0) break;
    ReplicatedPlacement q = p;
    auto it = std::lower_bound(q.hosts[hot].begin(), q.hosts[hot].end(), target);
    q.shares[hot].insert(q.shares[hot].begin() + (it - q.hosts[hot].begin()), 0.0);
    q.hosts[hot].insert(it, target);
    q = best_shares(problem, q, cost, start, deadline_s);
    const double o = evaluate(problem, q).objective;
    if (o > objective + 1e-9 * std::max(1.0, std::abs(objective))) break;
    p = std::move(q);
    objective = o;
    if (o < best_objective - 1e-9 * std::max(1.0, std::abs(best_objective))) best = p, best_objective = o;
  }
  return best;
}

}  // namespace

ReplicatedSolveResult solve_replicated(const PlacementProblem& problem, const SolveOptions& options) {
  if (problem.replica_budget == 0) {
    SolveResult r = solve(problem, options);
    return ReplicatedSolveResult{ReplicatedPlacement::single(r.placement), r.cost, r.objective, r.bound,
                                 r.gap, r.seconds, r.status, r.improved_on_greedy};
  }
  const auto start = Clock::now();
  problem.validate();
  TORCH_CHECK_VALUE(options.time_limit_s > 0.0 && std::isfinite(options.time_limit_s),
                    "placement.solve: expected time_limit > 0 seconds, got ", options.time_limit_s);
  TORCH_CHECK_VALUE(options.mip_gap >= 0.0, "placement.solve: expected mip_gap >= 0, got ", options.mip_gap);
  const int64_t E = problem.num_experts(), R = problem.num_ranks, B = problem.replica_budget;
  const std::vector<Pair> pairs = detail::top_pairs(problem);
  const int64_t P = static_cast<int64_t>(pairs.size());
  const int64_t num_x = E * R, col_L = 2 * num_x + 1, num_cols = 2 * num_x + 1 + P;
  auto col_x = [R](int64_t e, int64_t r) { return static_cast<int>(1 + e * R + r); };
  auto col_f = [R, num_x](int64_t e, int64_t r) { return static_cast<int>(1 + num_x + e * R + r); };
  auto col_z = [col_L](int64_t k) { return static_cast<int>(col_L + 1 + k); };

  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return problem.load[a] > problem.load[b]; });
  const bool symmetric = !problem.has_traffic() && options.symmetry_breaking;

  std::vector<std::vector<double>> cost(E, std::vector<double>(R, 0.0));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < R; ++r) cost[e][r] = problem.traffic_cost(e, r);
  }
  // Warm start: the better of two heuristics, both with LP-optimal shares. (a) LPT with
  // splitting (greedy_replicated). (b) the one-host optimum (solve(), given half of the time;
  // it sees traffic and co-activation) with copies added where the straggler is.
  const ReplicatedPlacement plain_greedy = greedy_replicated(problem);
  const double greedy_objective = evaluate(problem, plain_greedy).objective;
  ReplicatedPlacement warm = best_shares(problem, plain_greedy, cost, start, options.time_limit_s);
  PlacementCost warm_cost = evaluate(problem, warm);
  {
    SolveOptions one = options;
    one.time_limit_s = options.time_limit_s / 2.0;
    const SolveResult single = solve(problem, one);
    const double deadline = 0.7 * options.time_limit_s;
    ReplicatedPlacement b = replicate_stragglers(problem, ReplicatedPlacement::single(single.placement), cost,
                                                 start, deadline);
    const PlacementCost c = evaluate(problem, b);
    if (c.objective < warm_cost.objective) warm = std::move(b), warm_cost = c;
  }
  if (symmetric) warm = relabel(warm, order);

  const double total = std::accumulate(problem.load.begin(), problem.load.end(), 0.0);
  const double max_load = *std::max_element(problem.load.begin(), problem.load.end());
  // Straggler cuts: the mean, and the heaviest expert split over as many copies as it can get.
  const double L_min = std::max(total / static_cast<double>(R),
                                max_load / static_cast<double>(std::min<int64_t>(R, B + 1)));
  double trivial_bound = L_min;
  for (int64_t e = 0; e < E; ++e) trivial_bound += *std::min_element(cost[e].begin(), cost[e].end());
  for (const Pair& pr : pairs) trivial_bound -= problem.coactivation_weight * pr.count;

  std::unique_ptr<glp_prob, ProbDeleter> lp(glp_create_prob());
  glp_prob* m = lp.get();
  glp_set_obj_dir(m, GLP_MIN);
  glp_add_cols(m, static_cast<int>(num_cols));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < R; ++r) {
      glp_set_col_kind(m, col_x(e, r), GLP_BV);
      glp_set_col_bnds(m, col_f(e, r), GLP_DB, 0.0, 1.0);
      glp_set_obj_coef(m, col_f(e, r), cost[e][r]);
    }
  }
  if (symmetric) {
    // The k-th heaviest expert's hosts are among the first k + 1 + B labels (relabel()).
    for (int64_t k = 0; k < E; ++k) {
      for (int64_t r = k + 1 + B; r < R; ++r) {
        glp_set_col_bnds(m, col_x(order[k], r), GLP_FX, 0.0, 0.0);
        glp_set_col_bnds(m, col_f(order[k], r), GLP_FX, 0.0, 0.0);
      }
    }
  }
  glp_set_col_bnds(m, col_L, GLP_LO, L_min, 0.0);
  glp_set_obj_coef(m, col_L, 1.0);
  for (int64_t k = 0; k < P; ++k) {
    glp_set_col_bnds(m, col_z(k), GLP_DB, 0.0, 1.0);
    glp_set_obj_coef(m, col_z(k), -problem.coactivation_weight * pairs[k].count);
  }

  Triplets triplets;
  auto put = [&](int row, int col, double v) { triplets.put(row, col, v); };
  const int rows_split = 1, rows_link = rows_split + static_cast<int>(E);
  const int rows_count = rows_link + static_cast<int>(E * R), rows_load = rows_count + static_cast<int>(R);
  const int row_budget = rows_load + static_cast<int>(R), rows_pair = row_budget + 1;
  glp_add_rows(m, static_cast<int>(E + E * R + 2 * R + 1 + 2 * P * R));
  for (int64_t e = 0; e < E; ++e) {
    glp_set_row_bnds(m, rows_split + e, GLP_FX, 1.0, 1.0);
    for (int64_t r = 0; r < R; ++r) {
      put(rows_split + e, col_f(e, r), 1.0);
      const int row = rows_link + static_cast<int>(e * R + r);  // f - x <= 0
      glp_set_row_bnds(m, row, GLP_UP, 0.0, 0.0);
      put(row, col_f(e, r), 1.0);
      put(row, col_x(e, r), -1.0);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int row = rows_count + static_cast<int>(r);
    glp_set_row_bnds(m, row, GLP_DB, 1.0, static_cast<double>(problem.slots_per_rank));
    if (problem.slots_per_rank == 1) glp_set_row_bnds(m, row, GLP_FX, 1.0, 1.0);
    for (int64_t e = 0; e < E; ++e) put(row, col_x(e, r), 1.0);
    const int lrow = rows_load + static_cast<int>(r);  // sum load f - L <= 0
    glp_set_row_bnds(m, lrow, GLP_UP, 0.0, 0.0);
    for (int64_t e = 0; e < E; ++e) {
      if (problem.load[e] != 0.0) put(lrow, col_f(e, r), problem.load[e]);
    }
    put(lrow, col_L, -1.0);
  }
  glp_set_row_bnds(m, row_budget, GLP_UP, 0.0, static_cast<double>(E + B));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t r = 0; r < R; ++r) put(row_budget, col_x(e, r), 1.0);
  }
  for (int64_t k = 0; k < P; ++k) {
    for (int64_t r = 0; r < R; ++r) {  // z + x[e,r] - x[f,r] <= 1 and z + x[f,r] - x[e,r] <= 1
      for (int side = 0; side < 2; ++side) {
        const int row = rows_pair + static_cast<int>((2 * k + side) * R + r);
        const int64_t a = side == 0 ? pairs[k].e : pairs[k].f, b = side == 0 ? pairs[k].f : pairs[k].e;
        glp_set_row_bnds(m, row, GLP_UP, 0.0, 1.0);
        put(row, col_z(k), 1.0);
        put(row, col_x(a, r), 1.0);
        put(row, col_x(b, r), -1.0);
      }
    }
  }
  triplets.load_into(m);

  CallbackState state;
  state.warm.assign(num_cols + 1, 0.0);
  for (int64_t e = 0; e < E; ++e) {
    for (size_t i = 0; i < warm.hosts[e].size(); ++i) {
      state.warm[col_x(e, warm.hosts[e][i])] = 1.0;
      state.warm[col_f(e, warm.hosts[e][i])] = warm.shares[e][i];
    }
  }
  state.warm[col_L] = warm_cost.max_load;
  for (int64_t k = 0; k < P; ++k) {
    state.warm[col_z(k)] = warm.hosts[pairs[k].e] == warm.hosts[pairs[k].f] ? 1.0 : 0.0;
  }

  const detail::MilpOutcome milp =
      detail::relax_then_branch(m, start, options.time_limit_s, options.mip_gap, state, trivial_bound);
  std::string status = milp.status;
  double bound = milp.bound;
  ReplicatedPlacement ilp;
  if (milp.has_solution) {
    // Hosts: x = 1. Shares: f clipped at 0 and renormalised (GLPK's values carry round-off).
    ilp.num_ranks = R;
    ilp.hosts.resize(E);
    ilp.shares.resize(E);
    for (int64_t e = 0; e < E; ++e) {
      double sum = 0.0;
      for (int64_t r = 0; r < R; ++r) {
        if (glp_mip_col_val(m, col_x(e, r)) < 0.5) continue;
        ilp.hosts[e].push_back(r);
        ilp.shares[e].push_back(std::max(0.0, glp_mip_col_val(m, col_f(e, r))));
        sum += ilp.shares[e].back();
      }
      if (ilp.hosts[e].empty()) {  // cannot happen (sum f = 1, f <= x); keep the answer sound
        ilp = ReplicatedPlacement{};
        break;
      }
      for (double& s : ilp.shares[e]) s = sum > 0.0 ? s / sum : 1.0 / static_cast<double>(ilp.hosts[e].size());
    }
  }

  ReplicatedPlacement placement = warm;
  PlacementCost best_cost = warm_cost;
  if (!ilp.hosts.empty()) {
    ilp = best_shares(problem, ilp, cost, start, options.time_limit_s * 1.05);  // exact shares for its hosts
    const PlacementCost c = evaluate(problem, ilp);
    if (c.objective <= warm_cost.objective) {
      placement = std::move(ilp);
      best_cost = c;
    }
  }
  const bool improved = best_cost.objective < greedy_objective - 1e-9 * std::max(1.0, std::abs(greedy_objective));
  if (status == "optimal" && P == detail::modelled_pairs_max(problem)) {
    bound = std::min(bound, best_cost.objective);
  }
  const double gap = std::max(0.0, best_cost.objective - bound) / std::max(std::abs(best_cost.objective), 1e-12);
  // A heuristic may reach the bound before GLPK proves it (e.g. the mean load, when the
  // replicas balance every rank exactly): the bound is valid, so that is optimal too.
  if (status != "optimal" && gap <= options.mip_gap) status = "optimal";
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return ReplicatedSolveResult{std::move(placement), best_cost, best_cost.objective, bound, gap, seconds, status,
                               improved};
}

}  // namespace switchyard::placement
