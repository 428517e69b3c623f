// Speculative routing, measured (issue I, docs/speculation.md "Cross-layer route
// prediction"): how well the hidden state entering an MoE block predicts that block's
// routing when the block's attention is skipped -- its router applied to the previous
// block's output, as Pre-gated MoE and Speculative MoE do to schedule the next layer's
// all-to-all before the layer runs.
//
//   predicted = route_topk(router_b(post_attention_layernorm_b(x_b)))           skips attention
//   actual    = route_topk(router_b(post_attention_layernorm_b(x_b + attn_b(...))))
//
// Both use the layer's own top-k rule (topk_routing_options.h) without a capacity limit, so
// they differ only through the attention the prediction skipped.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace switchyard::nn {

class MoETransformerImpl;

struct RoutePrediction {
  int64_t block = 0;        // the predicted MoE block (index into model.layers)
  at::Tensor predicted_TK;  // [T, K] int64 global expert ids, T = B * S
  at::Tensor actual_TK;     // [T, K] the ids the block routed to
};

// Runs input_ids [B, S] through the model in eval mode without gradients (restoring the
// training flag) and returns one entry per MoE block that has a block before it. Needs the
// top-k router (c10::ValueError for expert choice: it has no per-token top-k to predict).
std::vector<RoutePrediction> predict_routes(MoETransformerImpl& model, const at::Tensor& input_ids);

}  // namespace switchyard::nn
