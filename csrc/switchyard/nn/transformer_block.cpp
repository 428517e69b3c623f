#include "switchyard/nn/transformer_block.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

namespace switchyard::nn {

TransformerBlockImpl::TransformerBlockImpl(const MoETransformerOptions& o, int64_t layer_index,
                                           bool first_moe, std::shared_ptr<const RotaryEmbedding> rope)
    : layer_index_(layer_index) {
  // Registration order = Hugging Face's, so named_parameters() lists them alike.
  self_attn = register_module("self_attn", Attention(o.d_model, o.n_heads, o.kv_heads(), std::move(rope), o.qkv_bias));
  if (o.is_moe_layer(layer_index)) {
    MoELayerOptions moe_options = o.moe;
    if (first_moe) moe_options.gating_residual = false;
    moe = register_module("mlp", MoELayer(moe_options));
  } else {
    dense = register_module("mlp", MLP(o.d_model, o.ffn_hidden, o.init_std));
  }
  input_layernorm = register_module("input_layernorm", RMSNorm(o.d_model, o.norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(o.d_model, o.norm_eps));
}

void TransformerBlockImpl::reset_parameters(double std, double residual_std) {
  const torch::NoGradGuard no_grad;
  for (auto* proj : {&self_attn->q_proj, &self_attn->k_proj, &self_attn->v_proj}) {
    (*proj)->weight.normal_(0.0, std);
    if ((*proj)->bias.defined()) (*proj)->bias.zero_();  // model.qkv_bias
  }
  self_attn->o_proj->weight.normal_(0.0, residual_std);
  if (moe) {
    moe->reset_parameters();  // every weight normal(0, init_std), selection bias zero
    moe->experts->down_proj.normal_(0.0, residual_std);
    if (moe->shared_experts) moe->shared_experts->down_proj->weight.normal_(0.0, residual_std);
  } else {
    dense->gate_proj->weight.normal_(0.0, std);
    dense->up_proj->weight.normal_(0.0, std);
    dense->down_proj->weight.normal_(0.0, residual_std);
  }
  input_layernorm->reset_parameters();
  post_attention_layernorm->reset_parameters();
}

BlockOutput TransformerBlockImpl::forward(const at::Tensor& x_BSd,
                                          const std::optional<at::Tensor>& prev_router_logits) {
  BlockOutput out;
  const bool residual = moe && moe->options().gating_residual && prev_router_logits.has_value() &&
                        prev_router_logits->defined();
  if (moe && moe->wants_route_prediction()) {
    // Speculative routing (docs/speculation.md): the router applied to the block's input,
    // skipping the attention, predicts this block's routes; the dispatcher exchanges the
    // predicted counts while the attention below runs.
    const torch::NoGradGuard no_grad;
    moe->prepare_routes(post_attention_layernorm(x_BSd), residual ? prev_router_logits : std::nullopt);
  }
  const at::Tensor h_BSd = x_BSd + self_attn(input_layernorm(x_BSd));
  const at::Tensor ffn_in = post_attention_layernorm(h_BSd);
  if (moe) {
    out.moe = moe(ffn_in, residual ? prev_router_logits : std::optional<at::Tensor>());
    out.hidden = h_BSd + out.moe->output;
  } else {
    out.hidden = h_BSd + dense(ffn_in);
  }
  return out;
}

}  // namespace switchyard::nn
