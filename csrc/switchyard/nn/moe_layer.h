// MoELayer: one Mixture-of-Experts feed-forward block (single process; the distributed
// layer puts the token dispatcher between permutation and experts).
//
//   x [..., d] -> router logits [T, E_total]      (Router; jitter in training)
//              -> routing (top-k or expert choice) + balancing losses
//              -> permute_tokens -> GroupedExperts -> unpermute_tokens (weighted sum over k)
//              -> + shared experts (optionally sigmoid-gated, Qwen2-MoE)
//              -> + zero-computation experts (MoE++: zero, copy, constant)
//              -> y [..., d]
//
// Submodules (and so state_dict keys): router, experts, shared_experts (num_shared_experts
// > 0), shared_expert_gate (shared_expert_gate), zero_compute (the constant experts'
// parameters, num_constant_experts > 0). docs/moe_layer.md describes the semantics and the statistics.
//
// Expert parallelism (docs/dispatch.md): enable_expert_parallel(ep) keeps only this rank's
// experts in `experts` ([E_local, ...], rows in ascending global id) and runs the routed
// experts through `ep` (the all-to-all dispatcher); everything else -- router, balancing,
// shared and zero-computation experts -- stays local to the rank's tokens.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "switchyard/nn/constant_experts.h"
#include "switchyard/nn/expert_parallelism.h"
#include "switchyard/nn/experts.h"
#include "switchyard/nn/mlp.h"
#include "switchyard/nn/moe_options.h"
#include "switchyard/nn/router.h"

namespace switchyard::nn {

// What one forward pass returns: the output, the balancing losses and routing statistics.
// Losses are 0-d float32 (float64 for float64 inputs); statistics are detached.
struct MoEOutput {
  at::Tensor output;                // like x
  at::Tensor aux_loss;              // coefficient-weighted sum of the three losses below
  at::Tensor load_balancing_loss;   // Switch/GShard loss, unweighted (0 when its coeff is 0)
  at::Tensor z_loss;                // router z-loss, unweighted (0 when its coeff is 0)
  at::Tensor seq_aux_loss;          // DeepSeek-V3 sequence-wise loss (0 when its coeff is 0)
  at::Tensor router_logits;         // [T, E_total]; the next layer's gating-residual input
  at::Tensor expert_counts;         // [E] int64, rows each routed expert computed
  at::Tensor expert_load;           // [E_total] int64, selections before the capacity limit
  at::Tensor num_dropped;           // [] int64: slots over capacity (top-k), or tokens no
                                    // expert chose (expert choice)
  at::Tensor real_experts_per_token;  // [] float64, mean routed experts a token used
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(MoELayerOptions options);

  // x: [..., d_model] (the last dimension is the hidden size; a 3-D [B, S, d] input makes S
  // the sequence length of the sequence-wise loss, otherwise all tokens form one sequence).
  // prev_router_logits: the previous MoE layer's router_logits, for the gating residual.
  MoEOutput forward(const at::Tensor& x,
                    const std::optional<at::Tensor>& prev_router_logits = std::nullopt);

  // Auxiliary-loss-free balancing (DeepSeek-V3): moves router.selection_bias by
  // bias_update_rate * sign(mean load - load) using the loads of every training forward
  // since the last call, then forgets them. Call once per optimizer step. A no-op when
  // bias_update_rate is 0 or no training forward ran.
  void update_selection_bias();
  // The same with the loads of every rank: `total_load` [E_total] int64 is the sum over
  // ranks of pending_load(), so every replica of the router moves its bias identically
  // (the sharding engine all-reduces it). Forgets the local loads.
  void update_selection_bias(const at::Tensor& total_load);
  // Loads of the training forwards since the last update: [E_total] int64, zeros if none.
  at::Tensor pending_load() const;

  // The expert ids [T,K] int64 this layer's top-k rule (topk_routing_options.h) picks from
  // router logits [T, outputs], every choice kept (no capacity limit). Top-k router only.
  at::Tensor top_experts(const at::Tensor& router_logits);

  // Speculative routing (docs/speculation.md): true when the layer routes top-k through an
  // expert parallelism that wants its routes predicted. The transformer block then calls
  // prepare_routes with the block's input normalised as the FFN input would be (the
  // attention skipped), before running the attention; the layer routes it with its own
  // router (no jitter) and hands the ids to the expert parallelism. No gradients; collective
  // over the expert-parallel group.
  bool wants_route_prediction() const;
  void prepare_routes(const at::Tensor& x_guess,
                      const std::optional<at::Tensor>& prev_router_logits = std::nullopt);

  // Distribute the routed experts: `experts` shrinks to ep->local_experts() (their current
  // weights are kept, so a layer built with the same seed on every rank holds exactly the
  // single-process weights) and forward sends routed tokens through `ep`. Both routers
  // work; expert choice picks among each rank's own tokens. Call once, before creating
  // the optimizer.
  void enable_expert_parallel(std::shared_ptr<ExpertParallelism> ep);
  const std::shared_ptr<ExpertParallelism>& expert_parallelism() const { return ep_; }
  // Global ids of the experts this layer holds, ascending (all E without expert parallelism).
  std::vector<int64_t> local_expert_ids() const;
  // Copies the rows of this layer's experts out of full [E, ...] tensors (e.g. a
  // single-process state_dict's experts.*), whatever the placement. gate_proj may be
  // undefined for gelu experts.
  void load_global_expert_weights(const at::Tensor& gate_proj, const at::Tensor& up_proj,
                                  const at::Tensor& down_proj);

  // Routing observer (placement::RoutingStatistics records through it): called by every
  // forward that runs in training mode with grad mode enabled -- so eval passes and no-grad
  // diagnostic passes are not seen -- with the rank's routing over global expert ids:
  // topk_experts_TK [T,K] int64 and kept_TK [T,K] bool (ops::kept_slot_mask: false for dropped,
  // null and zero-computation slots). Expert choice passes its top-k form (K = E, column e
  // is expert e, kept where e chose the token). Called under NoGradGuard; it must not keep
  // the tensors beyond the call unless it clones them. An empty function removes it.
  using RoutingObserver =
      std::function<void(const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK)>;
  void set_routing_observer(RoutingObserver observer) { routing_observer_ = std::move(observer); }
  bool has_routing_observer() const { return static_cast<bool>(routing_observer_); }

  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  const MoELayerOptions& options() const { return options_; }

  Router router{nullptr};
  GroupedExperts experts{nullptr};
  MLP shared_experts{nullptr};
  torch::nn::Linear shared_expert_gate{nullptr};
  ConstantExperts zero_compute{nullptr};

 private:
  at::Tensor check_input(const at::Tensor& x,
                         const std::optional<at::Tensor>& prev_router_logits) const;

  MoELayerOptions options_;
  at::Tensor pending_load_;  // expert loads summed since the last update_selection_bias
  std::shared_ptr<ExpertParallelism> ep_;  // null: every expert is local
  RoutingObserver routing_observer_;       // empty: nobody records the routing
};
TORCH_MODULE(MoELayer);

}  // namespace switchyard::nn
