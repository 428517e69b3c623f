// C++ API of the routing operators: top-k routing (with its variants: aux-loss-free bias,
// group-limited routing, AdaMoE null / MoE++ zero-computation experts, capacity limits) and
// expert-choice routing.
//
// Each function calls its torch.ops.switchyard.* operator through the dispatcher, so a C++
// caller gets what Python gets: CPU/CUDA dispatch, autograd (the weights are
// differentiable w.r.t. the logits), fake tensors. docs/routing.md states the semantics.
//
// Shape legend: T tokens, E router outputs (experts), E_r routed experts (the first E_r;
// the others are local), K top-k, S = T*K slots, C expert-choice capacity.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>
#include <string>

namespace switchyard::ops {

// The result of route_topk. The grouped arrays list every slot: first the kept routed slots
// sorted by (expert, token), expert e's block holding expert_counts[e] slots, then the tail
// (dropped slots and slots of local experts, expert_index -1) in ascending slot order.
struct Routing {
  at::Tensor topk_weights;   // [T,K] float32 (float64 for float64 logits); 0 where dropped
  at::Tensor topk_experts;   // [T,K] int64, best first
  at::Tensor token_index;    // [S] int64, grouped order
  at::Tensor expert_index;   // [S] int64, -1 in the tail
  at::Tensor slot_index;     // [S] int64, t*K + j of each grouped slot
  at::Tensor slot_weights;   // [S] like topk_weights, 0 in the tail
  at::Tensor expert_counts;  // [E_r] int64, kept slots per routed expert
  at::Tensor expert_load;    // [E] int64, selections per expert before the capacity limit
  at::Tensor num_dropped;    // [] int64, slots dropped by the capacity limit

  // Mean number of routed (real) experts a token selected, before the capacity limit: K
  // minus the slots that went to local experts (AdaMoE null experts, MoE++
  // zero-computation experts). A [] float64 tensor on the logits' device; no host sync.
  at::Tensor real_experts_per_token() const {
    const int64_t num_tokens = topk_experts.size(0);
    return expert_load.narrow(0, 0, expert_counts.size(0))
        .sum()
        .to(at::kDouble)
        .div(static_cast<double>(std::max<int64_t>(num_tokens, 1)));
  }
};

struct RouteTopkOptions {
  std::string score_func = "softmax";  // "softmax" or "sigmoid"
  bool renormalize = true;             // weights / sum of the selected scores
  double scaling_factor = 1.0;         // multiplies every weight
  std::optional<at::Tensor> selection_bias;  // [E]: changes the choice, not the weights
  int64_t num_groups = 1;              // expert groups (of the routed experts)
  int64_t topk_groups = 0;             // groups a token may use (0 = all)
  std::string group_score = "max";     // "max", "top2_sum" or "balanced"
  int64_t num_routed_experts = -1;     // E_r (-1 = E)
  double capacity_factor = 0.0;        // C = ceil(factor * T * K / E_r); 0 = unlimited
  std::string drop_policy = "position";  // "position" or "score"
};

// Top-k routing of logits_TE [T,E] (float32, float64, bfloat16 or float16).
Routing route_topk(const at::Tensor& logits_TE, int64_t k,
                   const RouteTopkOptions& options = RouteTopkOptions());

// The result of route_expert_choice: E*C entries grouped by expert, tokens ascending
// within an expert.
struct ExpertChoiceRouting {
  at::Tensor weights;              // [E*C] float32 (float64 for float64 logits): the score
  at::Tensor token_index;          // [E*C] int64
  at::Tensor expert_index;         // [E*C] int64
  at::Tensor expert_counts;        // [E] int64, all C
  at::Tensor num_unrouted_tokens;  // [] int64, tokens no expert chose
};

// Expert-choice routing: each expert takes its top-C tokens by score,
// C = min(T, ceil(capacity_factor * T * k / E)).
ExpertChoiceRouting route_expert_choice(const at::Tensor& logits_TE, double capacity_factor,
                                        int64_t k = 1,
                                        const std::string& score_func = "softmax");

// The expert-choice result in top-k form, for consumers that take a Routing (the
// expert-parallel dispatcher): K = E columns, column e of a token is expert e, with
// weight 0 and no grouped slot where expert e did not choose the token. The grouped
// arrays are r's (all kept, by expert then token); nothing is dropped. Differentiable
// w.r.t. r.weights. K = E makes the dispatcher's per-row metadata E ids and E weights.
Routing expert_choice_as_routing(const ExpertChoiceRouting& r, int64_t num_tokens);

// kept_TK [T,K] bool: which slots of topk_experts the grouped arrays run (slot_index where
// expert_index >= 0) -- false for capacity-dropped slots and for null / zero-computation
// experts. No host synchronisation. Used by the dispatcher (dispatch::kept_slots) and by
// the MoE layer's routing observer (the routing statistics).
at::Tensor kept_slot_mask(const Routing& routing);

}  // namespace switchyard::ops
