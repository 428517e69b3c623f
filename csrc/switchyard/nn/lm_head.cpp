#include "switchyard/nn/lm_head.h"

#include <ATen/ATen.h>

#include <ostream>

namespace switchyard::nn {

LMHeadImpl::LMHeadImpl(int64_t d_model, int64_t vocab_size) {
  TORCH_CHECK_VALUE(d_model >= 1 && vocab_size >= 1, "LMHead: d_model and vocab_size must be "
                    ">= 1, got ", d_model, " and ", vocab_size);
  weight = register_parameter("weight", at::zeros({vocab_size, d_model}));
}

LMHeadImpl::LMHeadImpl(const at::Tensor& shared_weight) {
  TORCH_CHECK_VALUE(shared_weight.defined() && shared_weight.dim() == 2,
                    "LMHead: expected a [vocab, d] weight to share, got ",
                    shared_weight.defined() ? shared_weight.sizes() : at::IntArrayRef{});
  weight = register_parameter("weight", shared_weight);
}

at::Tensor LMHeadImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "LMHead: expected x of shape [..., ",
              weight.size(1), "], got ", x.sizes());
  return at::linear(x, weight);
}

void LMHeadImpl::pretty_print(std::ostream& stream) const {
  stream << "LMHead(in_features=" << weight.size(1) << ", out_features=" << weight.size(0)
         << ", bias=false)";
}

}  // namespace switchyard::nn
