#include "switchyard/nn/router.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "switchyard/ops/balancing.h"

namespace switchyard::nn {

RouterImpl::RouterImpl(int64_t d_model, int64_t num_outputs, bool gating_residual,
                       bool selection_bias_on, double init_std)
    : init_std_(init_std) {
  weight = register_parameter("weight", at::empty({num_outputs, d_model}));
  if (gating_residual) {
    residual_weight = register_parameter("residual_weight", at::empty({num_outputs, num_outputs}));
  }
  if (selection_bias_on) selection_bias = register_buffer("selection_bias", at::zeros({num_outputs}));
  reset_parameters();
}

void RouterImpl::reset_parameters() {
  const torch::NoGradGuard no_grad;
  weight.normal_(0.0, init_std_);
  if (residual_weight.defined()) residual_weight.zero_();
  if (selection_bias.defined()) selection_bias.zero_();
}

at::Tensor RouterImpl::forward(const at::Tensor& x_Td,
                               const std::optional<at::Tensor>& prev_logits_TE) {
  if (prev_logits_TE.has_value() && prev_logits_TE->defined() && residual_weight.defined()) {
    return ops::router_logits(x_Td, weight, prev_logits_TE, residual_weight);
  }
  return ops::router_logits(x_Td, weight);
}

}  // namespace switchyard::nn
