#include "switchyard/placement/live_placement.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "switchyard/comm/string_gather.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/placement/greedy.h"
#include "switchyard/placement/ilp_solver.h"
#include "switchyard/placement/routing_trace.h"
#include "switchyard/sharding/sharded_engine.h"

namespace switchyard::placement {
namespace {

// The broadcast decision, as float64 (exact for the integers involved): a header, then per
// layer kLayerFields scores followed by the layer's map.
constexpr int64_t kHeader = 3;  // due?, reason (-1 interval, else the layer index), worst imbalance
constexpr int64_t kLayerFields = 11;
const std::vector<std::string> kStatuses = {"optimal", "time_limit", "feasible", "greedy"};

std::string format(const char* fmt, double a, double b = 0, double c = 0) {
  char buffer[160];
  std::snprintf(buffer, sizeof buffer, fmt, a, b, c);
  return buffer;
}

}  // namespace

LivePlacement::LivePlacement(sharding::ShardedEngine& engine, config::PlacementConfig options)
    : engine_(engine), options_(std::move(options)) {
  const auto layers = engine_.expert_layers();
  std::vector<int64_t> experts;
  int64_t R = 1, rank = 0;
  if (!layers.empty()) {
    R = engine_.groups().expert_parallel.size();
    rank = engine_.groups().expert_parallel.rank();
    for (const auto& l : layers) {
      experts.push_back(l.num_experts);
      layer_names_.push_back(l.name);
      // Checked here, on every rank, so that rank 0's solve cannot fail alone.
      TORCH_CHECK_VALUE(options_.slots_per_rank == 0 || options_.slots_per_rank * R >= l.num_experts,
                        "placement.slots_per_rank = ", options_.slots_per_rank, " gives ",
                        options_.slots_per_rank * R, " slots on ", R, " expert-parallel ranks, fewer than the ",
                        l.num_experts, " experts of '", l.name, "'");
    }
  } else {  // every rank holds every expert: statistics and traces only
    for (const auto& [name, module] : find_moe_layers(*engine_.module())) {
      experts.push_back(std::dynamic_pointer_cast<nn::MoELayerImpl>(module)->options().num_experts);
      layer_names_.push_back(name);
    }
    TORCH_CHECK_VALUE(!experts.empty(), "LivePlacement: the model has no MoE layer");
  }
  stats_ = std::make_shared<RoutingStatistics>(experts, R, rank, options_.ema_decay);
  const int64_t attached = stats_->attach(*engine_.module());
  TORCH_CHECK(attached == static_cast<int64_t>(experts.size()), "LivePlacement: attached routing statistics to ",
              attached, " MoE layers but expected ", experts.size());
}

PlacementProblem LivePlacement::problem_for(const RoutingStatistics& reduced, int64_t layer) const {
  PlacementProblem p = reduced.placement_problem(layer, /*use_ema=*/true);  // tokens per step
  const int64_t E = p.num_experts(), R = p.num_ranks;
  p.slots_per_rank = options_.slots_per_rank > 0 ? options_.slots_per_rank : (E + R - 1) / R;
  // The traffic matrix stays even at weight 0: evaluate() reports cross-rank tokens from it.
  p.traffic_weight = options_.traffic_weight;
  p.coactivation_weight = options_.coactivation_weight;
  p.ranks_per_node = options_.ranks_per_node;
  p.node_factor = options_.node_factor;
  return p;
}

std::optional<PlacementDecision> LivePlacement::after_step(int64_t step) {
  stats_->end_step();
  const bool scheduled = options_.interval > 0 && step % options_.interval == 0;
  const bool check = options_.imbalance_threshold > 0 && step % options_.check_every == 0;
  if (!scheduled && !check) return std::nullopt;
  PlacementDecision d = replace_now(step, scheduled ? "interval" : "");
  if (d.reason.empty()) return std::nullopt;
  return d;
}

PlacementDecision LivePlacement::replace_now(int64_t step, const std::string& reason) {
  return decide(step, reason, stats_->reduced(engine_.groups().world));
}

PlacementDecision LivePlacement::place_from_trace(const std::string& path) {
  const RoutingTrace trace = load_trace(path);
  std::vector<int64_t> experts;
  for (const auto& l : engine_.expert_layers()) experts.push_back(l.num_experts);
  check_trace_matches(trace, experts, engine_.groups().expert_parallel.size());
  return decide(engine_.optimizer_step(), "from the trace " + path, trace.statistics);
}

PlacementDecision LivePlacement::decide(int64_t step, const std::string& reason, const RoutingStatistics& reduced) {
  const auto layers = engine_.expert_layers();
  TORCH_CHECK_VALUE(!layers.empty(), "LivePlacement: placing experts needs "
                    "parallel.expert_parallel > 1; with one expert-parallel rank it only records statistics");
  comm::Communicator world = engine_.groups().world;
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  int64_t size = kHeader;
  for (const auto& l : layers) size += kLayerFields + l.num_experts;
  at::Tensor buffer = at::zeros({size}, at::kDouble);

  // Rank 0 decides and solves; everybody adopts its answer (a time-limited solve may end
  // differently on different ranks). A failure there is shared, so no rank waits forever.
  std::string error;
  if (world.rank() == 0) try {
    double* b = buffer.data_ptr<double>();
    std::vector<PlacementProblem> problems;
    double worst = 0;
    int64_t worst_layer = 0;
    for (int64_t l = 0; l < num_layers; ++l) {
      problems.push_back(problem_for(reduced, l));
      const double imbalance = evaluate(problems.back(), layers[l].placement).imbalance;
      if (imbalance > worst) worst = imbalance, worst_layer = l;
    }
    const bool due = !reason.empty() || worst > options_.imbalance_threshold;
    b[0] = due ? 1 : 0;
    b[1] = reason.empty() ? static_cast<double>(worst_layer) : -1;
    b[2] = worst;
    int64_t at = kHeader;
    for (int64_t l = 0; l < num_layers && due; ++l) {
      const PlacementProblem& p = problems[l];
      const PlacementCost old_cost = evaluate(p, layers[l].placement);
      std::optional<dispatch::ExpertPlacement> fresh;
      double bound = 0, gap = 0, seconds = 0;
      int64_t status = 3;
      if (options_.solver == "ilp") {
        SolveOptions so;
        so.time_limit_s = options_.time_limit;
        so.mip_gap = options_.mip_gap;
        SolveResult r = solve(p, so);
        fresh = r.placement, bound = r.bound, gap = r.gap, seconds = r.seconds;
        const auto it = std::find(kStatuses.begin(), kStatuses.end(), r.status);
        status = it == kStatuses.end() ? 2 : it - kStatuses.begin();
      } else {
        const auto start = std::chrono::steady_clock::now();
        fresh = greedy(p);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
      const PlacementCost new_cost = evaluate(p, *fresh);
      const bool adopt = !(*fresh == layers[l].placement) &&
                         old_cost.objective - new_cost.objective >= options_.min_gain * std::abs(old_cost.objective) &&
                         new_cost.objective < old_cost.objective;
      const double fields[kLayerFields] = {old_cost.objective, new_cost.objective, old_cost.imbalance,
                                           new_cost.imbalance, old_cost.cross_rank_tokens,
                                           new_cost.cross_rank_tokens, bound, gap, seconds,
                                           static_cast<double>(status), adopt ? 1.0 : 0.0};
      std::copy(fields, fields + kLayerFields, b + at);
      at += kLayerFields;
      const std::vector<int64_t>& ranks = (adopt ? *fresh : layers[l].placement).rank_of_expert();
      for (int64_t r : ranks) b[at++] = static_cast<double>(r);
    }
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
    buffer.data_ptr<double>()[0] = -1;
  } catch (const std::exception& e) {
    error = e.what();
    buffer.data_ptr<double>()[0] = -1;
  }
  if (world.size() > 1) world.broadcast(buffer, 0);
  if (buffer.data_ptr<double>()[0] < 0) {
    if (world.size() > 1) error = comm::all_gather_strings(world, error).front();
    TORCH_CHECK_VALUE(false, "LivePlacement: solving the placement on world rank 0 failed: ", error);
  }

  const double* b = buffer.data_ptr<double>();
  PlacementDecision d;
  d.step = step;
  if (b[0] == 0) return d;  // nothing due: empty reason
  d.reason = b[1] < 0 ? reason
                      : format("imbalance %.2f > %.2f in ", b[2], options_.imbalance_threshold) +
                            layer_names_[static_cast<size_t>(b[1])];
  std::vector<dispatch::ExpertPlacement> maps;
  int64_t at = kHeader;
  for (int64_t l = 0; l < num_layers; ++l) {
    LayerDecision ld;
    ld.layer = layers[l].name;
    const double* f = b + at;
    ld.old_objective = f[0], ld.new_objective = f[1], ld.old_imbalance = f[2], ld.new_imbalance = f[3];
    ld.old_cross_rank = f[4], ld.new_cross_rank = f[5], ld.bound = f[6], ld.gap = f[7];
    ld.solve_seconds = f[8];
    ld.status = kStatuses.at(static_cast<size_t>(f[9]));
    ld.adopted = f[10] != 0;
    at += kLayerFields;
    for (int64_t e = 0; e < layers[l].num_experts; ++e) ld.placement.push_back(static_cast<int64_t>(b[at++]));
    maps.emplace_back(ld.placement, layers[l].placement.num_ranks());
    d.layers_changed += ld.adopted ? 1 : 0;
    d.solve_seconds += ld.solve_seconds;
    d.layers.push_back(std::move(ld));
  }
  if (d.layers_changed > 0) {
    const sharding::ShardedEngine::MigrationReport m = engine_.set_expert_placements(maps);
    at::Tensor sums = at::tensor({static_cast<double>(m.experts_sent), static_cast<double>(m.bytes_sent)}, at::kDouble);
    at::Tensor slowest = at::tensor({m.seconds}, at::kDouble);
    if (world.size() > 1) {
      world.all_reduce(sums);
      world.all_reduce(slowest, comm::ReduceOp::kMax);
    }
    d.experts_moved = static_cast<int64_t>(sums[0].item<double>());
    d.bytes_migrated = static_cast<int64_t>(sums[1].item<double>());
    d.migrate_seconds = slowest.item<double>();
  }
  return d;
}

void LivePlacement::write_trace(const std::string& path) {
  comm::Communicator world = engine_.groups().world;
  const RoutingStatistics reduced = stats_->reduced(world);
  // Rank 0 writes; a failure there is shared, so no rank waits in the barrier forever.
  std::string error;
  if (world.rank() == 0) {
    try {
      TraceCreation created;
      created.world_size = world.size();
      save_trace(path, reduced, created);
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  if (world.size() > 1) error = comm::all_gather_strings(world, error).front();
  TORCH_CHECK_VALUE(error.empty(), "LivePlacement.write_trace: world rank 0 could not write ", path, ": ", error);
}

std::string describe(const PlacementDecision& d) {
  std::ostringstream s;
  s << "step " << d.step << ": expert re-placement (" << d.reason << "): " << d.layers_changed << " of "
    << d.layers.size() << " layers changed, " << d.experts_moved << " experts moved ("
    << format("%.2f MiB", static_cast<double>(d.bytes_migrated) / (1 << 20)) << format(" in %.3f s)", d.migrate_seconds)
    << format(", solved in %.3f s", d.solve_seconds);
  for (const LayerDecision& l : d.layers) {
    const double change = l.old_objective != 0 ? 100.0 * (l.new_objective - l.old_objective) / std::abs(l.old_objective) : 0;
    s << "\n  " << l.layer << ": objective " << format("%.1f -> %.1f (%+.1f%%)", l.old_objective, l.new_objective, change)
      << format(", max/mean %.3f -> %.3f", l.old_imbalance, l.new_imbalance)
      << format(", cross-rank tokens/step %.1f -> %.1f", l.old_cross_rank, l.new_cross_rank) << ", " << l.status
      << format(" (gap %.2f%%, %.3f s)", 100 * l.gap, l.solve_seconds) << (l.adopted ? ", adopted" : ", kept");
  }
  return s.str();
}

}  // namespace switchyard::placement
