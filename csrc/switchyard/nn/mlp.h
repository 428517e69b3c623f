// MLP: the dense SwiGLU feed-forward of Llama, down_proj(silu(gate_proj x) * up_proj x),
// with bias-free nn::Linear projections named like Llama's (gate_proj, up_proj, down_proj),
// so dense checkpoints map onto it one to one. The MoE layer uses it for its shared
// experts (DeepSeekMoE, Qwen2-MoE); the transformer uses it for its dense blocks.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace switchyard::nn {

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(int64_t d_model, int64_t hidden, double init_std = 0.02);

  // x [..., d_model] -> [..., d_model]
  at::Tensor forward(const at::Tensor& x);

  void reset_parameters();

  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  double init_std_;
};
TORCH_MODULE(MLP);

}  // namespace switchyard::nn
