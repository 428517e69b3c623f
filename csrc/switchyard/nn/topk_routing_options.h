// The ops::route_topk options an MoE layer routes with, from its options and its router's
// selection bias: shared by MoELayer::forward and the route-prediction diagnostic
// (route_prediction.h), so both choose experts by exactly the same rule.
#pragma once

#include <ATen/core/Tensor.h>

#include "switchyard/nn/moe_options.h"
#include "switchyard/ops/routing.h"

namespace switchyard::nn {

// selection_bias: the router's buffer, or undefined.
ops::RouteTopkOptions topk_routing_options(const MoELayerOptions& options, const at::Tensor& selection_bias);

}  // namespace switchyard::nn
