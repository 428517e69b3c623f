// Attention: grouped-query causal self-attention with rotary positions (Llama).
//
//   x [B, S, d] -> q = q_proj x [B, H, S, hd], k = k_proj x, v = v_proj x [B, Hkv, S, hd]
//              -> RoPE on q and k -> softmax(q k^T / sqrt(hd) + causal mask) v
//              -> o_proj [B, S, d]
//
// Projections are nn::Linear named like Llama's (q_proj, k_proj, v_proj, o_proj, weights
// [out, in]), so a Llama checkpoint maps onto it one to one. They are bias-free unless
// qkv_bias, which gives q_proj, k_proj and v_proj (never o_proj) a bias, as Qwen2 has.
// Each key/value head serves n_heads / n_kv_heads consecutive query heads
// (at::scaled_dot_product_attention's enable_gqa, i.e. Llama's repeat_kv).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <memory>

#include "switchyard/nn/rotary.h"

namespace switchyard::nn {

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t d_model, int64_t n_heads, int64_t n_kv_heads,
                std::shared_ptr<const RotaryEmbedding> rope, bool qkv_bias = false);

  // x [B, S, d_model] -> [B, S, d_model]; position s attends to positions <= s.
  at::Tensor forward(const at::Tensor& x_BSd);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t d_model_, n_heads_, n_kv_heads_, head_dim_;
  std::shared_ptr<const RotaryEmbedding> rope_;
};
TORCH_MODULE(Attention);

}  // namespace switchyard::nn
