#include "switchyard/nn/route_prediction.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include "switchyard/nn/moe_transformer.h"

namespace switchyard::nn {

std::vector<RoutePrediction> predict_routes(MoETransformerImpl& model, const at::Tensor& input_ids) {
  TORCH_CHECK_VALUE(model.options().moe.router == "topk", "predict_routes: the model routes with '",
                    model.options().moe.router, "'; only the top-k router has a per-token choice to predict");
  TORCH_CHECK_VALUE(input_ids.dim() == 2, "predict_routes: expected input_ids of shape [B, S], got ",
                    input_ids.sizes());
  const bool was_training = model.is_training();
  model.eval();
  const torch::NoGradGuard no_grad;
  std::vector<RoutePrediction> out;
  at::Tensor x = model.model->embed_tokens(input_ids);
  std::optional<at::Tensor> prev_logits;  // the latest MoE block's, for the gating residual
  for (size_t b = 0; b < model.model->blocks.size(); ++b) {
    TransformerBlock& block = model.model->blocks[b];
    if (block->moe && b > 0) {
      MoELayerImpl& moe = *block->moe;
      const bool residual = moe.options().gating_residual && prev_logits.has_value();
      const at::Tensor guess_in = block->post_attention_layernorm(x).reshape({-1, x.size(-1)});
      const at::Tensor guess_logits = moe.router(guess_in, residual ? prev_logits : std::nullopt);
      RoutePrediction p;
      p.block = static_cast<int64_t>(b);
      p.predicted_TK = moe.top_experts(guess_logits);
      out.push_back(std::move(p));
    }
    BlockOutput o = block(x, prev_logits);
    if (o.moe) {
      if (block->moe && b > 0) out.back().actual_TK = block->moe->top_experts(o.moe->router_logits);
      if (model.options().moe.gating_residual) prev_logits = o.moe->router_logits;
    }
    x = o.hidden;
  }
  model.train(was_training);
  return out;
}

}  // namespace switchyard::nn
