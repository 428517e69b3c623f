// RoutingStatistics: measured routing of a model's MoE layers, the input of expert placement
// (PlacementProblem's load, traffic and coactivation; docs/routing_trace.md).
//
// Per MoE layer, from this rank's own tokens (kept slots only: capacity-dropped slots, null
// experts and zero-computation experts -- ids >= E -- do not count):
//   tokens       [E]          kept slots per expert since the last reset
//   tokens_ema   [E]          exponential moving average of the per-step counts
//   traffic      [R,E]        tokens sent from source rank s to expert e; a rank fills only
//                             its own row (its index in the expert-parallel group)
//   coactivation [E,E]        tokens that chose both e and f; symmetric, zero diagonal
//   transitions  [E,E_next]   tokens that chose i at this layer and j at the next MoE layer
//                             (undefined for the last MoE layer)
// Recording needs no communication and no host synchronisation: the accumulators are
// float64 (exact counts up to 2^53) on the device of the first recorded routing. reduced()
// sums them over a group with one collective.
//
// Note [Routing statistics by matrix products]
// A token's kept choices form a 0/1 row of M [T,E] (one scatter_add of the kept slots; a
// token never picks one expert twice). Then tokens = column sums of M, coactivation =
// M^T M with the diagonal cleared, and transitions = M_L^T M_{L+1}: dense [E,E] products,
// exact in float64, O(T E^2) work and O(T E) memory -- no [T,E,E] tensor, no pair lists
// (expert choice has K = E columns, where K^2 pair lists would be large).
//
// Note [Transitions between MoE layers]
// The same tokens, in the same order, pass through consecutive MoE layers of one rank within
// a micro-batch. record() keeps the last recorded layer's M; when layer L+1 is recorded
// right after layer L with the same number of tokens, M_L^T M_{L+1} is added to layer L's
// transitions. Any other order (a layer run alone, a recomputation, a different T) adds
// nothing and counts one transitions_skipped on layer L.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/placement/placement_problem.h"

namespace switchyard::placement {

struct LayerStatistics {
  int64_t num_experts = 0;         // E of this layer
  at::Tensor tokens;               // [E] float64
  at::Tensor tokens_ema;           // [E] float64
  at::Tensor traffic;              // [R,E] float64
  at::Tensor coactivation;         // [E,E] float64
  at::Tensor transitions;          // [E,E_next] float64; undefined for the last MoE layer
  int64_t transitions_skipped = 0; // records of the next layer with no matching record here
};

// What attach() learns about each MoE layer (0 / empty where unknown).
struct LayerInfo {
  std::string name;  // module path in the model, e.g. "blocks.1.mlp"
  int64_t top_k = 0;
  int64_t d_model = 0;
  std::string router;  // "topk" | "expert_choice"
};

class RoutingStatistics {
 public:
  // experts_per_layer: E of each MoE layer in forward order; num_source_ranks: R, the
  // expert-parallel group size (1 without expert parallelism); source_rank: this rank's
  // index in it; ema_decay in [0, 1): ema = decay * ema + (1 - decay) * step counts.
  RoutingStatistics(std::vector<int64_t> experts_per_layer, int64_t num_source_ranks,
                    int64_t source_rank, double ema_decay = 0.9);
  ~RoutingStatistics();
  RoutingStatistics(RoutingStatistics&&) noexcept;
  RoutingStatistics& operator=(RoutingStatistics&&) noexcept;
  RoutingStatistics(const RoutingStatistics&) = delete;  // clone() copies explicitly
  RoutingStatistics& operator=(const RoutingStatistics&) = delete;
  RoutingStatistics clone() const;  // a deep copy (not attached to anything)

  // topk_experts_TK [T,K] int64 global expert ids (>= E: null / zero-computation, never
  // counted); kept_TK [T,K] bool. Any device; the first call fixes the accumulators' device.
  void record(int64_t layer, const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK);
  // Folds this step's per-expert counts into tokens_ema (the first step sets it) and
  // starts a new step. Call once per optimizer step, after the forwards.
  void end_step();
  // Forgets every count, the EMA and the steps (after a re-placement decision, say).
  void reset();

  int64_t steps() const;
  int64_t num_layers() const;
  int64_t num_source_ranks() const;
  int64_t source_rank() const;
  double ema_decay() const;
  const std::vector<int64_t>& experts_per_layer() const;
  const LayerStatistics& layer(int64_t l) const;
  // Sum of tokens over the layer's experts (kept slots).
  double total_tokens(int64_t l) const;
  const std::vector<LayerInfo>& layer_info() const;
  c10::Device device() const;  // the accumulators' device

  // Collective over `group` (Note [Who may call]): a copy whose tensors and skip counts are
  // summed over the group's ranks -- every rank gets the same. One all_reduce of one flat
  // float64 buffer. Every rank must have recorded the same number of steps (checked after
  // the reduction, so all ranks throw together). A pending (unfinished) step is not part
  // of the copy's EMA. The copy's source_rank is 0.
  RoutingStatistics reduced(const comm::Communicator& group) const;

  // Every nn::MoELayerImpl in module.modules() (registration order = forward order) records
  // its training forwards into *this, layer i into layer(i). Checks the count and each
  // layer's num_experts against experts_per_layer; fills layer_info(). Returns the number of
  // MoE layers. The hook holds a weak reference: destroying *this silences it. Attaching
  // replaces any observer the layers had; detach() removes them.
  int64_t attach(torch::nn::Module& module);
  static void detach(torch::nn::Module& module);

  // A placement instance for layer l: load (tokens_ema when use_ema and a step has ended,
  // otherwise tokens), num_ranks, traffic and coactivation filled (row-major; per-step means,
  // total / steps, when the load is the EMA); the caller sets slots_per_rank and the weights.
  PlacementProblem placement_problem(int64_t l, bool use_ema = true) const;

  // Deserialisation (routing_trace.cpp): replaces layer l's tensors and the step count.
  void restore(int64_t l, LayerStatistics statistics);
  void set_steps(int64_t steps);
  void set_layer_info(std::vector<LayerInfo> info);

  struct State;

 private:
  explicit RoutingStatistics(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;  // shared with attached observers (weakly)
};

// Every nn::MoELayerImpl of `module` in registration order, with its module path.
std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> find_moe_layers(
    torch::nn::Module& module);

}  // namespace switchyard::placement
