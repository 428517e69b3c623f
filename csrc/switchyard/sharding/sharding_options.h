// ShardingOptions: what the sharded engine reads from the YAML `parallel:` and `train:`
// sections, as one plain struct (the engine never sees YAML). docs/sharding.md lists the keys.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "switchyard/dispatch/speculation.h"

namespace switchyard::config {
struct Config;
}

namespace switchyard::sharding {

struct ShardingOptions {
  bool shard_dense = true;        // parallel.shard_dense: false = replicate (all-reduce grads)
  int64_t grad_accum = 1;         // train.grad_accum: micro-batches per step()
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;      // decoupled; never on 1-D parameters (norms, biases)
  double grad_clip = 1.0;         // 0 = no clipping
  std::string precision = "fp32"; // fp32 | bf16 | fp16 | fp64: the compute dtype
  std::string reduce_precision = "fp32";  // fp32 | compute: dtype of gradient reductions
  double loss_scale = 0.0;        // fp16 only: 0 = dynamic (2^16, halved on overflow), > 0 static
  bool prefetch = true;           // overlap: gather the next unit early, keep one reduce-scatter in flight
  dispatch::SpeculationOptions speculation;  // speculation: section, for the MoE layers' dispatchers

  // Compute dtype of parameters and activations.
  at::ScalarType compute_dtype() const;
  // Master weights, optimizer state and gradient shards: float64 under fp64, else float32.
  at::ScalarType master_dtype() const;
  // Gradient reductions: float64 under fp64; the compute dtype under "compute"; else float32.
  at::ScalarType reduce_dtype() const;
  bool dynamic_loss_scale() const { return precision == "fp16" && loss_scale <= 0; }

  // Throws c10::ValueError naming the first invalid field.
  void validate() const;
};

ShardingOptions sharding_options_from_config(const config::Config& config);

}  // namespace switchyard::sharding
