// Internal to the routing operators (route_topk*.cpp, route_expert_choice*.cpp,
// routing.cpp): argument validation, output allocation and kernel parameters shared by
// the CPU, CUDA and Meta implementations. Not part of the C++ API (that is routing.h).
//
// Sizes are read as SymInts where the outputs' shapes need them, so the Meta kernels work
// under torch.compile's dynamic shapes; the number of experts is always specialised.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

#include "kernels/routing/routing_types.h"

namespace switchyard::ops::detail {

// ---- common --------------------------------------------------------------------------------

// Checks that logits is a 2-D float32/float64/bfloat16/float16 tensor; returns E.
int64_t check_logits(const char* op, const at::Tensor& logits);
kernels::LogitsType logits_type(const at::Tensor& logits);
// float64 for float64 logits, else float32: the type weights are computed and returned in.
at::ScalarType weight_dtype(const at::Tensor& logits);
kernels::ScoreFunc parse_score_func(const char* op, c10::string_view score_func);

// ---- route_topk ----------------------------------------------------------------------------

using RouteTopkOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A validated route_topk call, independent of the number of tokens.
struct TopkSettings {
  int64_t num_experts = 0;
  int64_t k = 1;
  kernels::ScoreFunc score_func = kernels::ScoreFunc::kSoftmax;
  bool renormalize = true;
  double scaling_factor = 1.0;
  bool has_bias = false;
  int64_t num_groups = 1;
  int64_t topk_groups = 1;  // resolved: 0 became num_groups
  kernels::GroupScore group_score = kernels::GroupScore::kMax;
  int64_t num_routed_experts = 0;  // resolved: -1 became num_experts
  double capacity_factor = 0.0;
  kernels::DropPolicy drop_policy = kernels::DropPolicy::kPosition;
};

TopkSettings check_route_topk(const at::Tensor& logits, int64_t k, c10::string_view score_func,
                              bool renormalize, double scaling_factor,
                              const std::optional<at::Tensor>& selection_bias,
                              int64_t num_groups, int64_t topk_groups,
                              c10::string_view group_score, int64_t num_routed_experts,
                              double capacity_factor, c10::string_view drop_policy);

// Empty outputs of the right shapes and dtypes on the logits' device.
RouteTopkOutputs allocate_route_topk(const at::Tensor& logits, const TopkSettings& s);

// C = ceil(capacity_factor * T * k / E_r) in double precision, -1 when unlimited.
int64_t topk_capacity(const TopkSettings& s, int64_t num_tokens);

kernels::TopkRouterParams topk_params(const TopkSettings& s, int64_t num_tokens,
                                      int num_threads);
kernels::TopkRouterOutputs topk_output_pointers(RouteTopkOutputs& outputs);

// The selection bias in the weights' dtype, contiguous; undefined when absent.
at::Tensor prepare_bias(const TopkSettings& s, const at::Tensor& logits,
                        const std::optional<at::Tensor>& selection_bias);

// Calls switchyard::route_topk through the dispatcher.
RouteTopkOutputs call_route_topk(const at::Tensor& logits, int64_t k, c10::string_view score_func,
                                 bool renormalize, double scaling_factor,
                                 const std::optional<at::Tensor>& selection_bias,
                                 int64_t num_groups, int64_t topk_groups,
                                 c10::string_view group_score, int64_t num_routed_experts,
                                 double capacity_factor, c10::string_view drop_policy);

// route_topk_backward: checks the saved tensors and returns E_r.
int64_t check_route_topk_backward(const at::Tensor& grad_topk_weights,
                                  const at::Tensor& grad_slot_weights, const at::Tensor& logits,
                                  const at::Tensor& topk_experts, const at::Tensor& slot_index,
                                  const at::Tensor& expert_counts, int64_t k);

// Everything a route_topk_backward kernel launch needs, checked and made contiguous in the
// accumulation dtype. The tensors keep the raw pointers in `inputs` alive. Shared by the
// CPU and CUDA implementations so that they differ only in the launcher they call.
struct TopkBackwardCall {
  at::Tensor logits, grad_topk_weights, grad_slot_weights, topk_experts, slot_index,
      expert_counts;
  at::Tensor grad;  // [T,E] in the accumulation dtype, written by the kernel
  kernels::TopkBackwardParams params;
  kernels::TopkBackwardInputs inputs;
};
TopkBackwardCall prepare_route_topk_backward(
    const at::Tensor& grad_topk_weights, const at::Tensor& grad_slot_weights,
    const at::Tensor& logits, const at::Tensor& topk_experts, const at::Tensor& slot_index,
    const at::Tensor& expert_counts, int64_t k, c10::string_view score_func, bool renormalize,
    double scaling_factor);

// ---- route_expert_choice -----------------------------------------------------------------

using RouteExpertChoiceOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct ExpertChoiceSettings {
  int64_t num_experts = 0;
  double capacity_factor = 1.0;
  int64_t k = 1;
  kernels::ScoreFunc score_func = kernels::ScoreFunc::kSoftmax;
};

ExpertChoiceSettings check_route_expert_choice(const at::Tensor& logits, double capacity_factor,
                                               int64_t k, c10::string_view score_func);

// C = min(T, ceil(capacity_factor * T * k / E)) in double precision.
int64_t expert_choice_capacity(const ExpertChoiceSettings& s, int64_t num_tokens);

RouteExpertChoiceOutputs allocate_route_expert_choice(const at::Tensor& logits,
                                                      const ExpertChoiceSettings& s,
                                                      int64_t num_tokens);

kernels::ExpertChoiceOutputs expert_choice_output_pointers(RouteExpertChoiceOutputs& outputs);

// Calls switchyard::route_expert_choice through the dispatcher.
RouteExpertChoiceOutputs call_route_expert_choice(const at::Tensor& logits,
                                                  double capacity_factor, int64_t k,
                                                  c10::string_view score_func);

void check_route_expert_choice_backward(const at::Tensor& grad_weights, const at::Tensor& logits,
                                        const at::Tensor& token_index,
                                        const at::Tensor& expert_index);

// The route_expert_choice_backward counterpart of TopkBackwardCall.
struct ExpertChoiceBackwardCall {
  at::Tensor logits, grad_weights, token_index, expert_index;
  at::Tensor grad;  // [T,E] in the accumulation dtype, written by the kernel
  kernels::ExpertChoiceParams params;
};
ExpertChoiceBackwardCall prepare_route_expert_choice_backward(const at::Tensor& grad_weights,
                                                              const at::Tensor& logits,
                                                              const at::Tensor& token_index,
                                                              const at::Tensor& expert_index,
                                                              c10::string_view score_func);

}  // namespace switchyard::ops::detail
