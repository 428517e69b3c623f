#include "switchyard/nn/mlp.h"

#include <ATen/ATen.h>
#include <torch/nn/options/linear.h>
#include <torch/utils.h>

namespace switchyard::nn {

MLPImpl::MLPImpl(int64_t d_model, int64_t hidden, double init_std) : init_std_(init_std) {
  TORCH_CHECK_VALUE(d_model >= 1 && hidden >= 1, "MLP: d_model and hidden must be >= 1, got ",
                    d_model, " and ", hidden);
  const auto linear = [](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  };
  gate_proj = register_module("gate_proj", linear(d_model, hidden));
  up_proj = register_module("up_proj", linear(d_model, hidden));
  down_proj = register_module("down_proj", linear(hidden, d_model));
  reset_parameters();
}

void MLPImpl::reset_parameters() {
  const torch::NoGradGuard no_grad;
  for (auto& p : parameters()) p.normal_(0.0, init_std_);
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  return down_proj(at::silu(gate_proj(x)) * up_proj(x));
}

}  // namespace switchyard::nn
