// RMSNorm (Llama): y = weight * (x / sqrt(mean(x^2 over the last dim) + eps)).
//
// The normalisation runs in float32 for bfloat16/float16 inputs and is cast back before the
// weight multiplies it, the order Hugging Face's LlamaRMSNorm uses, so a converted
// checkpoint computes the same values; float32 and float64 inputs stay in their dtype.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace switchyard::nn {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);

  // x [..., dim] -> [..., dim]
  at::Tensor forward(const at::Tensor& x);

  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  at::Tensor weight;  // [dim], ones at init

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace switchyard::nn
