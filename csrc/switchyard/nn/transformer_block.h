// TransformerBlock: one pre-norm decoder block (Llama), with a dense or an MoE FFN.
//
//   h   = x + self_attn(input_layernorm(x))
//   out = h + mlp(post_attention_layernorm(h))
//
// `mlp` is the dense SwiGLU MLP or an MoELayer; both register under the name "mlp", so
// parameter names follow Hugging Face Llama (dense) and Mixtral-like layouts (MoE):
// self_attn.{q,k,v,o}_proj.weight, mlp.{gate,up,down}_proj.weight or mlp.router.weight,
// mlp.experts.*, ..., input_layernorm.weight, post_attention_layernorm.weight.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>

#include "switchyard/nn/attention.h"
#include "switchyard/nn/mlp.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/nn/rms_norm.h"
#include "switchyard/nn/transformer_options.h"

namespace switchyard::nn {

struct BlockOutput {
  at::Tensor hidden;              // [B, S, d]
  std::optional<MoEOutput> moe;   // set by MoE blocks (losses, router logits, statistics)
};

class TransformerBlockImpl : public torch::nn::Module {
 public:
  // first_moe: this is the first MoE block, which has no previous router logits, so its
  // router gets no gating-residual weight (it would never be used nor trained).
  TransformerBlockImpl(const MoETransformerOptions& options, int64_t layer_index, bool first_moe,
                       std::shared_ptr<const RotaryEmbedding> rope);

  // x [B, S, d]; prev_router_logits: the previous MoE block's router logits for the gating
  // residual (ignored by dense blocks; undefined or absent before the first MoE block).
  BlockOutput forward(const at::Tensor& x_BSd,
                      const std::optional<at::Tensor>& prev_router_logits = std::nullopt);

  bool is_moe() const { return static_cast<bool>(moe); }
  int64_t layer_index() const { return layer_index_; }

  // Normal(0, std) for the projections, ones for the norms; o_proj and the FFN's down
  // projections (dense, routed experts, shared experts) use residual_std instead.
  void reset_parameters(double std, double residual_std);

  Attention self_attn{nullptr};
  MLP dense{nullptr};     // registered as "mlp" in dense blocks
  MoELayer moe{nullptr};  // registered as "mlp" in MoE blocks
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};

 private:
  int64_t layer_index_;
};
TORCH_MODULE(TransformerBlock);

}  // namespace switchyard::nn
