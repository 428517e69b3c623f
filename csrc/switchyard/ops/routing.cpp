// The C++ API of the routing operators (routing.h), and the helpers the routing operators'
// implementations share (routing_internal.h).
#include "switchyard/ops/routing.h"

#include <ATen/ATen.h>

#include "switchyard/ops/routing_internal.h"

namespace switchyard::ops {

namespace detail {

int64_t check_logits(const char* op, const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, op,
              ": logits must be a 2-D tensor [num_tokens, num_experts], got shape ",
              logits.sym_sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              op, ": logits must be float32, float64, bfloat16 or float16, got ", dtype);
  const int64_t E = logits.sym_size(1).guard_int(__FILE__, __LINE__);
  TORCH_CHECK(E >= 1, op, ": logits must have at least one expert (column), got shape ",
              logits.sym_sizes());
  return E;
}

kernels::LogitsType logits_type(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat: return kernels::LogitsType::kFloat32;
    case at::kDouble: return kernels::LogitsType::kFloat64;
    case at::kBFloat16: return kernels::LogitsType::kBFloat16;
    case at::kHalf: return kernels::LogitsType::kFloat16;
    default: TORCH_INTERNAL_ASSERT(false, "unchecked logits dtype ", logits.scalar_type());
  }
}

at::ScalarType weight_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

kernels::ScoreFunc parse_score_func(const char* op, c10::string_view score_func) {
  if (score_func == "softmax") return kernels::ScoreFunc::kSoftmax;
  if (score_func == "sigmoid") return kernels::ScoreFunc::kSigmoid;
  TORCH_CHECK(false, op, ": score_func must be one of 'softmax', 'sigmoid', got '", score_func,
              "'");
}

}  // namespace detail

Routing route_topk(const at::Tensor& logits_TE, int64_t k, const RouteTopkOptions& o) {
  auto [topk_weights, topk_experts, token_index, expert_index, slot_index, slot_weights,
        expert_counts, expert_load, num_dropped] =
      detail::call_route_topk(logits_TE, k, o.score_func, o.renormalize, o.scaling_factor,
                              o.selection_bias, o.num_groups, o.topk_groups, o.group_score,
                              o.num_routed_experts, o.capacity_factor, o.drop_policy);
  return Routing{topk_weights, topk_experts, token_index,   expert_index, slot_index,
                 slot_weights, expert_counts, expert_load, num_dropped};
}

ExpertChoiceRouting route_expert_choice(const at::Tensor& logits_TE, double capacity_factor,
                                        int64_t k, const std::string& score_func) {
  auto [weights, token_index, expert_index, expert_counts, num_unrouted] =
      detail::call_route_expert_choice(logits_TE, capacity_factor, k, score_func);
  return ExpertChoiceRouting{weights, token_index, expert_index, expert_counts, num_unrouted};
}

Routing expert_choice_as_routing(const ExpertChoiceRouting& r, int64_t num_tokens) {
  const int64_t E = r.expert_counts.size(0), T = num_tokens;
  TORCH_CHECK_VALUE(T >= 0, "expert_choice_as_routing: num_tokens must be >= 0, got ", T);
  const at::Tensor slot_index = r.token_index * E + r.expert_index;
  // index_put (not index_put_) keeps the weights differentiable; every (token, expert)
  // pair appears at most once, so no accumulation order is involved.
  const at::Tensor topk_weights =
      at::zeros({T * E}, r.weights.options()).index_put({slot_index}, r.weights).view({T, E});
  const at::Tensor topk_experts =
      at::arange(E, r.token_index.options()).expand({T, E}).contiguous();
  return Routing{topk_weights,    topk_experts,    r.token_index,
                 r.expert_index,  slot_index,      r.weights,
                 r.expert_counts, r.expert_counts, at::zeros({}, r.expert_counts.options())};
}

at::Tensor kept_slot_mask(const Routing& routing) {
  const int64_t T = routing.topk_experts.size(0), K = routing.topk_experts.size(1);
  // Tail slots (dropped, null, zero-computation) scatter into a spare entry at T*K: no
  // boolean indexing, so no host synchronisation.
  const at::Tensor idx =
      at::where(routing.expert_index >= 0, routing.slot_index, routing.slot_index.new_full({}, T * K));
  at::Tensor kept = at::zeros({T * K + 1}, routing.slot_index.options().dtype(at::kBool));
  kept.index_fill_(0, idx, true);
  return kept.narrow(0, 0, T * K).view({T, K});
}

}  // namespace switchyard::ops
