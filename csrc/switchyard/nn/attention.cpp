#include "switchyard/nn/attention.h"

#include <ATen/ATen.h>
#include <torch/nn/options/linear.h>

namespace switchyard::nn {

AttentionImpl::AttentionImpl(int64_t d_model, int64_t n_heads, int64_t n_kv_heads,
                             std::shared_ptr<const RotaryEmbedding> rope, bool qkv_bias)
    : d_model_(d_model), n_heads_(n_heads), n_kv_heads_(n_kv_heads), rope_(std::move(rope)) {
  TORCH_CHECK_VALUE(n_heads >= 1 && n_kv_heads >= 1 && d_model % n_heads == 0 &&
                        n_heads % n_kv_heads == 0,
                    "Attention: expected n_heads to divide d_model and n_kv_heads to divide "
                    "n_heads, got d_model = ", d_model, ", n_heads = ", n_heads,
                    ", n_kv_heads = ", n_kv_heads);
  head_dim_ = d_model / n_heads;
  TORCH_CHECK_VALUE(rope_ && rope_->head_dim() == head_dim_, "Attention: expected a "
                    "RotaryEmbedding for head size ", head_dim_);
  const auto linear = [](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", linear(d_model, n_heads * head_dim_, qkv_bias));
  k_proj = register_module("k_proj", linear(d_model, n_kv_heads * head_dim_, qkv_bias));
  v_proj = register_module("v_proj", linear(d_model, n_kv_heads * head_dim_, qkv_bias));
  o_proj = register_module("o_proj", linear(n_heads * head_dim_, d_model, false));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x_BSd) {
  TORCH_CHECK(x_BSd.dim() == 3 && x_BSd.size(2) == d_model_,
              "Attention: expected x of shape [B, S, ", d_model_, "], got ", x_BSd.sizes());
  const int64_t B = x_BSd.size(0), S = x_BSd.size(1);
  // [B, S, heads * hd] -> [B, heads, S, hd]
  const auto heads = [&](const at::Tensor& t, int64_t n) {
    return t.view({B, S, n, head_dim_}).transpose(1, 2);
  };
  const at::Tensor q_BHSh = rope_->apply(heads(q_proj(x_BSd), n_heads_));
  const at::Tensor k_BKSh = rope_->apply(heads(k_proj(x_BSd), n_kv_heads_));
  const at::Tensor v_BKSh = heads(v_proj(x_BSd), n_kv_heads_);
  const at::Tensor o_BHSh = at::scaled_dot_product_attention(
      q_BHSh, k_BKSh, v_BKSh, /*attn_mask=*/std::nullopt, /*dropout_p=*/0.0,
      /*is_causal=*/true, /*scale=*/std::nullopt, /*enable_gqa=*/n_kv_heads_ != n_heads_);
  return o_proj(o_BHSh.transpose(1, 2).reshape({B, S, n_heads_ * head_dim_}));
}

}  // namespace switchyard::nn
