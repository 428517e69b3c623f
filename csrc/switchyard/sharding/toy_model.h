// ToyMoEStack: the smallest language model that is a nn::UnitSequence, for the sharding
// engine's tests and benchmark (the real model, MoETransformer, lives in nn/). Units:
//
//   0        "embed"      input_ids [B,S] -> x [B,S,d]                    (Embedding)
//   1..n     "blocks.i"   x + MLP(x) for even i-1, x + MoELayer(x) for odd (aux loss, stats)
//   n+1      "head"       logits = x W^T + b (W the embedding when tied) -> mean cross
//                         entropy over targets (ignore_index -100)
//
// No norms or attention: enough to exercise dense, expert, 1-D (bias) and tied parameters.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <utility>

#include "switchyard/nn/moe_options.h"
#include "switchyard/nn/unit_sequence.h"

namespace switchyard::sharding {

struct ToyMoEStackOptions {
  int64_t vocab = 64;
  int64_t num_blocks = 4;    // alternating MLP, MoE, MLP, MoE, ...
  int64_t mlp_hidden = 32;
  bool tie_embeddings = false;
  nn::MoELayerOptions moe;   // moe.d_model is the model width
};

class ToyMoEStackImpl : public torch::nn::Module, public nn::UnitSequence {
 public:
  explicit ToyMoEStackImpl(ToyMoEStackOptions options);

  int64_t num_units() const override { return options_.num_blocks + 2; }
  std::string unit_name(int64_t i) const override;
  std::vector<nn::UnitParameter> unit_parameters(int64_t i) override;
  nn::UnitStep run_unit(int64_t i, const std::vector<at::Tensor>& inputs,
                        const nn::UnitBatch& batch) override;

  // Runs every unit in order: (loss, sum of aux losses).
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& input_ids, const at::Tensor& targets);

  const ToyMoEStackOptions& options() const { return options_; }

  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear head{nullptr};  // untied only
  at::Tensor head_bias;             // tied only

 private:
  ToyMoEStackOptions options_;
};
TORCH_MODULE(ToyMoEStack);

}  // namespace switchyard::sharding
