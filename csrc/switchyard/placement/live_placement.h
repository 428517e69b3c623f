// LivePlacement: re-places every MoE layer's experts during training, from the routing the
// job measured (docs/placement.md, "Live re-placement"; config section `placement:`).
//
//   LivePlacement live(engine, config.placement);   // attaches RoutingStatistics to the model
//   for each step:
//     engine.step(...);
//     if (auto d = live.after_step(step)) log(describe(*d));
//
// after_step (collective over the world, every step):
//   1. folds the step's routing counts into the statistics (local; recording itself never
//      communicates, routing_statistics.h)
//   2. decides whether a decision is due: every `interval` steps, or, every `check_every`
//      steps, when some layer's straggler ratio (max / mean rank load under its current
//      placement, from the moving average of tokens per expert) exceeds
//      `imbalance_threshold`. Only then are the statistics all-reduced (one collective).
//   3. rank 0 of the world solves one PlacementProblem per layer (ILP or greedy) and
//      broadcasts the maps and their scores, so every rank adopts the identical placement
//      however far a time-limited solve got
//   4. a layer adopts its new map when it lowers the objective by at least `min_gain`
//   5. ShardedEngine::set_expert_placements migrates the experts and their AdamW state and
//      switches the dispatchers before the next step; the window statistics restart.
// Placement never changes what the model computes (expert_migration.cpp, Note [Migration]).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "switchyard/config/config.h"
#include "switchyard/placement/placement_problem.h"
#include "switchyard/placement/routing_statistics.h"

namespace switchyard::sharding {
class ShardedEngine;
}

namespace switchyard::placement {

// One layer's part of a decision. Loads are tokens per step (moving average).
struct LayerDecision {
  std::string layer;               // the MoE layer's module path
  double old_objective = 0, new_objective = 0;
  double old_imbalance = 0, new_imbalance = 0;     // max / mean rank load
  double old_cross_rank = 0, new_cross_rank = 0;   // tokens per step leaving their rank
  double bound = 0, gap = 0, solve_seconds = 0;
  std::string status;              // the solver's ("optimal", "time_limit", "greedy", ...)
  bool adopted = false;
  std::vector<int64_t> placement;  // rank of each expert from now on
};

struct PlacementDecision {
  int64_t step = 0;
  std::string reason;              // "interval" or "imbalance 1.83 > 1.50 in <layer>"
  std::vector<LayerDecision> layers;
  int64_t layers_changed = 0;
  int64_t experts_moved = 0;       // over the job (replicas count separately)
  int64_t bytes_migrated = 0;      // over the job: master weights + AdamW moments sent
  double solve_seconds = 0;        // rank 0, all layers
  double migrate_seconds = 0;      // the slowest rank
};

class LivePlacement {
 public:
  // Attaches a RoutingStatistics to every MoE layer of the engine's model. Without expert
  // parallelism it only records (for write_trace); deciding then throws c10::ValueError.
  LivePlacement(sharding::ShardedEngine& engine, config::PlacementConfig options);

  // Call after every optimizer step (`step`: the number of steps done). Collective over the
  // world. Returns a decision when one was made (adopted or not).
  std::optional<PlacementDecision> after_step(int64_t step);

  // Solves now from the job's statistics so far, whatever the schedule says; with an empty
  // `reason`, only when the imbalance threshold is passed (the decision's reason stays empty
  // otherwise). Collective.
  PlacementDecision replace_now(int64_t step, const std::string& reason);

  // Solves from a routing trace file recorded earlier (placement.from_trace) and moves the
  // experts accordingly, before training. Every rank reads the file; one from another model
  // shape is refused (routing_trace.h). Collective.
  PlacementDecision place_from_trace(const std::string& path);

  // The statistics summed over the job (collective) written as a routing trace file by
  // world rank 0 (routing_trace.h). Collective.
  void write_trace(const std::string& path);

  const RoutingStatistics& statistics() const { return *stats_; }
  const config::PlacementConfig& options() const { return options_; }

  // The layer's problem from job-wide statistics and the options (for tools and tests).
  PlacementProblem problem_for(const RoutingStatistics& reduced, int64_t layer) const;

 private:
  // Rank 0 decides from `reduced` (job-wide statistics) and broadcasts; every rank adopts.
  PlacementDecision decide(int64_t step, const std::string& reason, const RoutingStatistics& reduced);

  sharding::ShardedEngine& engine_;
  config::PlacementConfig options_;
  std::shared_ptr<RoutingStatistics> stats_;
  std::vector<std::string> layer_names_;
};

// Log lines: one summary line, then one line per layer.
std::string describe(const PlacementDecision& decision);

}  // namespace switchyard::placement
