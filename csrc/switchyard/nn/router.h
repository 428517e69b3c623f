// Router: the gate of an MoE layer. logits = x W^T (+ prev_logits R^T with the MoE++
// gating residual), over every router output: the routed experts, then AdaMoE null
// experts, then MoE++ zero / copy / constant experts.
//
// Parameters: weight [E_total, d]; residual_weight [E_total, E_total] (gating residual
// only, initialised to 0 so a new layer starts from its own logits). Buffer:
// selection_bias [E_total] (DeepSeek-V3's correction bias: it moves the choice of experts,
// not their weights; updated outside autograd by MoELayer::update_selection_bias).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <optional>

namespace switchyard::nn {

class RouterImpl : public torch::nn::Module {
 public:
  RouterImpl(int64_t d_model, int64_t num_outputs, bool gating_residual, bool selection_bias,
             double init_std = 0.02);

  // x_Td [T, d] -> logits [T, E_total]. prev_logits_TE: the previous MoE layer's logits
  // (gating residual; ignored when absent).
  at::Tensor forward(const at::Tensor& x_Td,
                     const std::optional<at::Tensor>& prev_logits_TE = std::nullopt);

  void reset_parameters();

  at::Tensor weight;           // [E_total, d]
  at::Tensor residual_weight;  // [E_total, E_total] or undefined
  at::Tensor selection_bias;   // buffer [E_total] or undefined

 private:
  double init_std_;
};
TORCH_MODULE(Router);

}  // namespace switchyard::nn
