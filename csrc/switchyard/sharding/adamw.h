// One AdamW update (decoupled weight decay, Loshchilov & Hutter) on a flat tensor, written
// out so that a shard of a flat buffer and a whole expert weight go through the same
// arithmetic: the order of operations is torch.optim.AdamW's single-tensor path.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace switchyard::sharding {

struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;          // 1-based, after incrementing
  double grad_scale = 1.0;   // the clipping coefficient (1 = none)
};

// param, exp_avg, exp_avg_sq: same shape and dtype (master); grad any floating dtype of
// that shape. Weight decay applies to the [offset, length) ranges of the flattened param in
// decay_ranges (all of it when decay_all). Updates param and the two moments in place.
void adamw_update(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                  const at::Tensor& exp_avg_sq, const AdamWStep& h,
                  const std::vector<std::pair<int64_t, int64_t>>& decay_ranges, bool decay_all);

}  // namespace switchyard::sharding
