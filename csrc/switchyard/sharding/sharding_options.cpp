#include "switchyard/sharding/sharding_options.h"

#include <c10/util/Exception.h>

#include "switchyard/config/config.h"

namespace switchyard::sharding {

at::ScalarType ShardingOptions::compute_dtype() const {
  if (precision == "fp32") return at::kFloat;
  if (precision == "bf16") return at::kBFloat16;
  if (precision == "fp16") return at::kHalf;
  if (precision == "fp64") return at::kDouble;
  TORCH_CHECK_VALUE(false, "ShardingOptions: precision must be fp32, bf16, fp16 or fp64, got '",
                    precision, "'");
}

at::ScalarType ShardingOptions::master_dtype() const {
  return precision == "fp64" ? at::kDouble : at::kFloat;
}

at::ScalarType ShardingOptions::reduce_dtype() const {
  if (precision == "fp64") return at::kDouble;
  return reduce_precision == "compute" ? compute_dtype() : at::kFloat;
}

void ShardingOptions::validate() const {
  (void)compute_dtype();
  TORCH_CHECK_VALUE(reduce_precision == "fp32" || reduce_precision == "compute",
                    "ShardingOptions: reduce_precision must be fp32 or compute, got '",
                    reduce_precision, "'");
  TORCH_CHECK_VALUE(grad_accum >= 1, "ShardingOptions: grad_accum must be >= 1, got ", grad_accum);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
                    "ShardingOptions: betas must lie in [0, 1), got (", beta1, ", ", beta2, ")");
  TORCH_CHECK_VALUE(eps > 0, "ShardingOptions: eps must be > 0, got ", eps);
  TORCH_CHECK_VALUE(weight_decay >= 0, "ShardingOptions: weight_decay must be >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(grad_clip >= 0, "ShardingOptions: grad_clip must be >= 0, got ", grad_clip);
  TORCH_CHECK_VALUE(loss_scale >= 0, "ShardingOptions: loss_scale must be >= 0, got ", loss_scale);
}

ShardingOptions sharding_options_from_config(const config::Config& config) {
  ShardingOptions o;
  const auto& t = config.train;
  o.shard_dense = config.parallel.shard_dense;
  o.grad_accum = t.grad_accum;
  o.beta1 = t.beta1;
  o.beta2 = t.beta2;
  o.eps = t.eps;
  o.weight_decay = t.weight_decay;
  o.grad_clip = t.grad_clip;
  o.precision = t.precision;
  o.reduce_precision = t.reduce_precision;
  o.loss_scale = t.loss_scale;
  o.prefetch = config.parallel.prefetch;
  o.speculation = dispatch::speculation_options_from_config(config);
  o.validate();
  return o;
}

}  // namespace switchyard::sharding
