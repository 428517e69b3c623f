#include "switchyard/nn/constant_experts.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

namespace switchyard::nn {

ConstantExpertsImpl::ConstantExpertsImpl(int64_t num_experts, int64_t d_model, double init_std)
    : init_std_(init_std) {
  const_vectors = register_parameter("const_vectors", at::empty({num_experts, d_model}));
  const_gate_weight = register_parameter("const_gate_weight", at::empty({num_experts, 2, d_model}));
  reset_parameters();
}

void ConstantExpertsImpl::reset_parameters() {
  const torch::NoGradGuard no_grad;
  const_vectors.normal_(0.0, init_std_);
  const_gate_weight.normal_(0.0, init_std_);
}

}  // namespace switchyard::nn
