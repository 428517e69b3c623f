#include "switchyard/sharding/adamw.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <cmath>

namespace switchyard::sharding {

void adamw_update(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                  const at::Tensor& exp_avg_sq, const AdamWStep& h,
                  const std::vector<std::pair<int64_t, int64_t>>& decay_ranges, bool decay_all) {
  const torch::NoGradGuard no_grad;
  at::Tensor g = grad.to(param.scalar_type());
  if (h.grad_scale != 1.0) g = g * h.grad_scale;
  // 1. Decoupled weight decay: p <- p * (1 - lr * wd), only where it applies.
  if (h.weight_decay != 0) {
    const double keep = 1.0 - h.lr * h.weight_decay;
    if (decay_all) {
      param.mul_(keep);
    } else {
      const at::Tensor flat = param.view(-1);
      for (const auto& [offset, length] : decay_ranges) flat.narrow(0, offset, length).mul_(keep);
    }
  }
  // 2. Moments.
  exp_avg.lerp_(g, 1.0 - h.beta1);
  exp_avg_sq.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
  // 3. Bias-corrected step.
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  const at::Tensor denom = (exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(h.eps);
  param.addcdiv_(exp_avg, denom, -h.lr / bc1);
}

}  // namespace switchyard::sharding
