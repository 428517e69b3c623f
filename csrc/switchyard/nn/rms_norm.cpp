#include "switchyard/nn/rms_norm.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <ostream>

namespace switchyard::nn {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) {
  TORCH_CHECK_VALUE(dim >= 1, "RMSNorm: dim must be >= 1, got ", dim);
  TORCH_CHECK_VALUE(eps > 0, "RMSNorm: eps must be > 0, got ", eps);
  weight = register_parameter("weight", at::ones({dim}));
}

void RMSNormImpl::reset_parameters() {
  const torch::NoGradGuard no_grad;
  weight.fill_(1.0);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == dim_, "RMSNorm: expected x of shape [..., ", dim_,
              "], got ", x.sizes());
  const bool low_precision = x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
  const at::Tensor xf = low_precision ? x.to(at::kFloat) : x;
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * normed.to(x.scalar_type());
}

void RMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "RMSNorm(" << dim_ << ", eps=" << eps_ << ")";
}

}  // namespace switchyard::nn
