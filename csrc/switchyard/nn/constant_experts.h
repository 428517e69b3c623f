// ConstantExperts: the parameters of MoE++'s constant experts, E_i(x) = a1 x + a2 v_i with
// [a1, a2] = softmax(G_i x): const_vectors v [Nc, d] and const_gate_weight G [Nc, 2, d].
// The zero and copy experts have no parameters; all three kinds run in
// switchyard::ops::zero_compute_experts, on the rank where the token lives.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace switchyard::nn {

class ConstantExpertsImpl : public torch::nn::Module {
 public:
  ConstantExpertsImpl(int64_t num_experts, int64_t d_model, double init_std = 0.02);

  void reset_parameters();

  at::Tensor const_vectors;      // [Nc, d]
  at::Tensor const_gate_weight;  // [Nc, 2, d]

 private:
  double init_std_;
};
TORCH_MODULE(ConstantExperts);

}  // namespace switchyard::nn
